"""The sim-farm's gRPC service: collections split into shards that run in worker processes."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Counter

from graspfleet.v1 import common_pb2, sim_farm_pb2, sim_farm_pb2_grpc
from robots.config import PROFILES
from robots.inventory import InventoryError, parse_arm
from robots.names import RANDOMIZATION_NAMES
from robots.objects import ObjectSet
from services.common import clock, logs
from services.common.config import load_config
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.names import check_name
from services.common.server import ServiceServer
from services.episode_store.client.spool import EpisodeSpool, Uploader
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.worker import ShardJob, run_shard

log = logs.get_logger(__name__)

SERVICE_NAME = sim_farm_pb2.DESCRIPTOR.services_by_name["SimFarm"].full_name
State = sim_farm_pb2
Policy = sim_farm_pb2.CollectionPolicy

EPISODES = Counter("graspfleet_simfarm_episodes_total", "Episodes collected.", ["domain"])
SUCCESSES = Counter(
    "graspfleet_simfarm_successes_total", "Collected episodes whose grasp succeeded.", ["domain"]
)
PHYSICS_STEPS = Counter(
    "graspfleet_simfarm_physics_steps_total", "Physics steps simulated (rate: steps/s)."
)
RENDERS = Counter("graspfleet_simfarm_renders_total", "Camera images rendered (rate: renders/s).")

_POLICY = {
    sim_farm_pb2.CollectionPolicy.KIND_RANDOM: "random",
    sim_farm_pb2.CollectionPolicy.KIND_ORACLE: "oracle",
    sim_farm_pb2.CollectionPolicy.KIND_CEM: "cem",
    sim_farm_pb2.CollectionPolicy.KIND_EPSILON_MIX: "eps-mix",
}
MAX_STEPS_LIMIT = 50


@dataclass
class _Shard:
    job: ShardJob
    status: sim_farm_pb2.ShardStatus
    process: multiprocessing.Process | None = None
    physics: int = 0  # the worker's running totals, as last reported
    renders: int = 0


@dataclass
class _Collection:
    message: sim_farm_pb2.Collection
    shards: list[_Shard]
    stop: object = None  # a multiprocessing Event
    lock: threading.Lock = field(default_factory=threading.Lock)


def validate(spec: sim_farm_pb2.CollectionSpec, config: SimFarmConfig) -> None:
    """Refuses a collection that cannot run, saying which field to fix."""
    if not 1 <= spec.num_episodes <= config.max_episodes:
        raise InvalidArgument(
            f"num_episodes={spec.num_episodes}; ask for 1 to {config.max_episodes}"
        )
    if spec.num_shards > spec.num_episodes or spec.num_shards > 1000:
        raise InvalidArgument(
            f"num_shards={spec.num_shards}; at most num_episodes and at most 1000"
        )
    if spec.max_steps > MAX_STEPS_LIMIT:
        raise InvalidArgument(f"max_steps={spec.max_steps}; at most {MAX_STEPS_LIMIT}")
    if not spec.arm_config_yaml and spec.domain not in (
        common_pb2.DOMAIN_SIM,
        common_pb2.DOMAIN_REAL,
    ):
        raise InvalidArgument(
            "domain must be DOMAIN_SIM or DOMAIN_REAL (proxy-real arms), or give arm_config_yaml"
        )
    if spec.randomization and spec.randomization not in RANDOMIZATION_NAMES:
        raise InvalidArgument(f"randomization={spec.randomization} is not a known value")
    if spec.objects_per_bin > 20:
        raise InvalidArgument(f"objects_per_bin={spec.objects_per_bin}; at most 20")
    if spec.policy.kind not in _POLICY:
        raise InvalidArgument(
            "policy.kind must be KIND_RANDOM, KIND_ORACLE, KIND_CEM or KIND_EPSILON_MIX"
        )
    needs_planner = spec.policy.kind in (Policy.KIND_CEM, Policy.KIND_EPSILON_MIX)
    if needs_planner and not config.planner_address:
        raise FailedPrecondition(
            "CEM collection needs the servo-planner: start the farm with --planner-address"
        )
    if not 0.0 <= spec.policy.epsilon <= 1.0:
        raise InvalidArgument(f"policy.epsilon={spec.policy.epsilon}; expected 0..1")
    if spec.profile and spec.profile not in PROFILES:
        raise InvalidArgument(f"profile={spec.profile!r}; known: {sorted(PROFILES)}")
    size = spec.image_size
    if (size.width or size.height) and not (8 <= size.width <= 2048 and 8 <= size.height <= 2048):
        raise InvalidArgument(f"image_size {size.width}x{size.height}: each side 8..2048 pixels")
    try:
        ObjectSet(spec.object_set or "train")
    except ValueError as err:
        raise InvalidArgument(f"object_set: {err}") from None
    if spec.arm_config_yaml:
        if len(spec.arm_config_yaml) > 65536:
            raise InvalidArgument("arm_config_yaml is over 64 KiB; send one arm's settings")
        try:
            arm = parse_arm(spec.arm_config_yaml, "arm_config_yaml")
        except InventoryError as err:
            raise InvalidArgument(str(err)) from None
        if arm.driver not in ("sim", "proxy-real"):
            raise InvalidArgument(
                f"arm_config_yaml: driver {arm.driver!r} is a hardware arm; the farm simulates "
                "sim and proxy-real arms only"
            )
    if spec.transform.kind:
        if spec.transform.kind != "rcan":
            raise InvalidArgument(
                f"transform.kind={spec.transform.kind!r}; the refiner transforms images before "
                "planning with kind 'rcan'"
            )
        if not needs_planner:
            raise InvalidArgument("transform applies to CEM and ε-mix collection only")
        if not config.refiner_address:
            raise FailedPrecondition(
                "collections with an image transform need the refiner: start the farm with "
                "--refiner-address"
            )
    if spec.policy.model.version < 0:
        raise InvalidArgument(f"policy.model.version={spec.policy.model.version}; at least 0")


class SimFarmServicer(sim_farm_pb2_grpc.SimFarmServicer):
    def __init__(self, config: SimFarmConfig) -> None:
        self.config = config
        self.context = multiprocessing.get_context("spawn")
        self.progress = self.context.Queue()
        self.collections: dict[str, _Collection] = {}
        self.order: list[str] = []
        self.lock = threading.Lock()
        self._closing = threading.Event()
        self._threads = [
            threading.Thread(target=self._read_progress, name="sim-farm-progress", daemon=True),
            threading.Thread(target=self._schedule, name="sim-farm-scheduler", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._flush_leftovers()

    def _flush_leftovers(self) -> None:
        """Episodes a stopped or crashed farm left spooled go to the store now."""
        root = Path(self.config.spool_dir)
        for folder in sorted(p for p in root.glob("*/shard-*") if p.is_dir()):
            spool = EpisodeSpool(folder, f"leftover-{folder.parent.name}-{folder.name}")
            if spool.depth():
                log.info(
                    "flushing leftover episodes",
                    extra={"spool": str(folder), "episodes": spool.depth()},
                )
                Uploader(spool, lambda: self.config.store_address).start()

    # -- RPCs ----------------------------------------------------------------------

    def StartCollection(self, request, context):
        spec = sim_farm_pb2.CollectionSpec()
        spec.CopyFrom(request.spec)
        validate(spec, self.config)
        # The id names the shard's spool folder and prefixes every episode id (<= 128).
        collection_id = check_name(
            "collection_id", request.collection_id or f"col-{uuid.uuid4().hex[:10]}", 100
        )
        with self.lock:
            if collection_id in self.collections:
                return self._snapshot(self.collections[collection_id])
            spec.num_shards = spec.num_shards or min(spec.num_episodes, self.config.workers)
            spec.max_steps = spec.max_steps or 8
            spec.objects_per_bin = spec.objects_per_bin or 5
            spec.object_set = spec.object_set or (
                "real-train" if spec.domain == common_pb2.DOMAIN_REAL else "train"
            )
            spec.profile = spec.profile or "default"
            if not spec.image_size.width:
                width, height = PROFILES[spec.profile]
                spec.image_size.CopyFrom(common_pb2.ImageSize(width=width, height=height))
            collection = _Collection(
                message=sim_farm_pb2.Collection(
                    collection_id=collection_id,
                    spec=spec,
                    state=State.COLLECTION_STATE_PENDING,
                    created_at=clock.now(),
                ),
                shards=self._shards(collection_id, spec),
                stop=self.context.Event(),
            )
            self.collections[collection_id] = collection
            self.order.append(collection_id)
        log.info(
            "collection started", extra={"collection": collection_id, "episodes": spec.num_episodes}
        )
        return self._snapshot(collection)

    def _shards(self, collection_id: str, spec) -> list[_Shard]:
        base, extra = divmod(spec.num_episodes, spec.num_shards)
        shards, first = [], 0
        for index in range(spec.num_shards):
            count = base + (1 if index < extra else 0)
            arm = (
                parse_arm(spec.arm_config_yaml, "arm_config_yaml") if spec.arm_config_yaml else None
            )
            job = ShardJob(
                collection_id=collection_id,
                shard=index,
                episodes=count,
                first_episode=first,
                seed=spec.seed,
                max_steps=spec.max_steps,
                domain=arm.domain
                if arm
                else "sim"
                if spec.domain == common_pb2.DOMAIN_SIM
                else "proxy-real",
                randomization=RANDOMIZATION_NAMES.get(spec.randomization, "none"),
                object_set=spec.object_set,
                objects_per_bin=spec.objects_per_bin,
                policy=_POLICY[spec.policy.kind],
                epsilon=spec.policy.epsilon,
                model_label=spec.policy.model.label,
                width=spec.image_size.width,
                height=spec.image_size.height,
                render_masks=spec.render_masks or spec.domain == common_pb2.DOMAIN_SIM,
                render_canonical=spec.render_canonical,
                store_address=self.config.store_address,
                planner_address=self.config.planner_address,
                plan_timeout_s=self.config.plan_timeout_s,
                spool_dir=self.config.spool_dir,
                spool_max_bytes=max(1, self.config.spool_max_bytes // self.config.workers),
                upload_stall_s=self.config.upload_stall_s,
                model_version=spec.policy.model.version,
                arm_config_yaml=spec.arm_config_yaml,
                evaluation=spec.evaluation,
                skip_stored=spec.skip_stored,
                transform_kind=spec.transform.kind,
                transform_label=spec.transform.model.label,
                transform_version=spec.transform.model.version,
                refiner_address=self.config.refiner_address,
            )
            status = sim_farm_pb2.ShardStatus(
                index=index, state=State.COLLECTION_STATE_PENDING, episodes_target=count
            )
            shards.append(_Shard(job, status))
            first += count
        return shards

    def GetCollection(self, request, context):
        return self._snapshot(self._find(request.collection_id))

    def ListCollections(self, request, context):
        with self.lock:
            ids = list(reversed(self.order))
        return sim_farm_pb2.ListCollectionsResponse(
            collections=[self._snapshot(self.collections[i]) for i in ids]
        )

    def StopCollection(self, request, context):
        collection = self._find(request.collection_id)
        collection.stop.set()
        with collection.lock:
            for shard in collection.shards:
                if shard.status.state == State.COLLECTION_STATE_PENDING:
                    shard.status.state = State.COLLECTION_STATE_STOPPED
        log.info("collection stopping", extra={"collection": request.collection_id})
        return self._snapshot(collection)

    def _find(self, collection_id: str) -> _Collection:
        with self.lock:
            if collection_id not in self.collections:
                raise NotFound(f"no collection {collection_id!r} on this farm")
            return self.collections[collection_id]

    def _snapshot(self, collection: _Collection) -> sim_farm_pb2.Collection:
        with collection.lock:
            message = sim_farm_pb2.Collection()
            message.CopyFrom(collection.message)
            message.shards.extend(s.status for s in collection.shards)
            message.episodes_done = sum(s.status.episodes_done for s in collection.shards)
            message.successes = sum(s.status.successes for s in collection.shards)
            states = {s.status.state for s in collection.shards}
            if states <= {State.COLLECTION_STATE_SUCCEEDED}:
                message.state = State.COLLECTION_STATE_SUCCEEDED
            elif State.COLLECTION_STATE_FAILED in states and not states & {
                State.COLLECTION_STATE_RUNNING,
                State.COLLECTION_STATE_PENDING,
            }:
                message.state = State.COLLECTION_STATE_FAILED
                message.error = next(s.status.error for s in collection.shards if s.status.error)
            elif collection.stop.is_set() and not states & {State.COLLECTION_STATE_RUNNING}:
                message.state = State.COLLECTION_STATE_STOPPED
            elif State.COLLECTION_STATE_RUNNING in states or states & {
                State.COLLECTION_STATE_SUCCEEDED,
                State.COLLECTION_STATE_FAILED,
            }:
                message.state = State.COLLECTION_STATE_RUNNING
            return message

    # -- shards ----------------------------------------------------------------------

    def _running(self) -> int:
        return sum(
            1
            for c in self.collections.values()
            for s in c.shards
            if s.status.state == State.COLLECTION_STATE_RUNNING
        )

    def _schedule(self) -> None:
        while not self._closing.wait(0.2):
            with self.lock:
                pending = [
                    (c, s)
                    for cid in self.order
                    for c in [self.collections[cid]]
                    for s in c.shards
                    if s.status.state == State.COLLECTION_STATE_PENDING and not c.stop.is_set()
                ]
                free = self.config.workers - self._running()
                for collection, shard in pending[: max(0, free)]:
                    shard.process = self.context.Process(
                        target=run_shard,
                        args=(shard.job, self.progress, collection.stop),
                        daemon=True,
                    )
                    shard.process.start()
                    with collection.lock:
                        shard.status.state = State.COLLECTION_STATE_RUNNING
                        shard.status.worker = f"pid {shard.process.pid}"
                self._reap()

    def _reap(self) -> None:
        """A shard whose process died without reporting is failed, not left running forever."""
        for collection in self.collections.values():
            for shard in collection.shards:
                process = shard.process
                if (
                    shard.status.state == State.COLLECTION_STATE_RUNNING
                    and process is not None
                    and not process.is_alive()
                    and process.exitcode not in (0, None)
                ):
                    with collection.lock:
                        shard.status.state = State.COLLECTION_STATE_FAILED
                        shard.status.error = f"worker exited with code {process.exitcode}"

    def _read_progress(self) -> None:
        while not self._closing.is_set():
            try:
                kind, collection_id, index, detail, physics, renders = self.progress.get(
                    timeout=0.5
                )
            except queue.Empty:
                continue
            collection = self.collections.get(collection_id)
            if collection is None:
                continue
            shard = collection.shards[index]
            domain = shard.job.domain
            with collection.lock:
                if kind == "stored":  # collected by an earlier run of the same collection
                    shard.status.episodes_done += 1
                    shard.status.successes += int(detail)
                elif kind == "episode":
                    shard.status.episodes_done += 1
                    shard.status.successes += int(detail)
                    EPISODES.labels(domain).inc()
                    SUCCESSES.labels(domain).inc(int(detail))
                    # Workers report running totals; count what is new since the last report.
                    PHYSICS_STEPS.inc(max(0, physics - shard.physics))
                    RENDERS.inc(max(0, renders - shard.renders))
                    shard.physics, shard.renders = physics, renders
                elif kind == "done":
                    shard.status.state = (
                        State.COLLECTION_STATE_STOPPED
                        if shard.status.episodes_done < shard.status.episodes_target
                        else State.COLLECTION_STATE_SUCCEEDED
                    )
                else:
                    shard.status.state = State.COLLECTION_STATE_FAILED
                    shard.status.error = detail
                    log.error(
                        "shard failed",
                        extra={"collection": collection_id, "shard": index, "error": detail},
                    )
                if kind != "episode" and all(
                    s.status.state
                    not in (State.COLLECTION_STATE_PENDING, State.COLLECTION_STATE_RUNNING)
                    for s in collection.shards
                ):
                    collection.message.finished_at.CopyFrom(clock.now())

    def close(self) -> None:
        """Stops every collection; episodes already collected stay spooled or stored."""
        for collection in self.collections.values():
            collection.stop.set()
        for collection in self.collections.values():
            for shard in collection.shards:
                if shard.process is not None:
                    shard.process.join(timeout=30)
                    if shard.process.is_alive():
                        shard.process.terminate()
        self._closing.set()


def create_server(config: SimFarmConfig) -> ServiceServer:
    """Starts the farm; SERVING once its scheduler runs and leftover spools are being flushed."""
    servicer = SimFarmServicer(config)
    server = ServiceServer(
        "sim-farm",
        config,
        lambda grpc_server: sim_farm_pb2_grpc.add_SimFarmServicer_to_server(servicer, grpc_server),
        [SERVICE_NAME],
        on_stop=servicer.close,
    )
    server.set_serving(True)
    return server


def main(argv: list[str] | None = None) -> None:
    """`graspfleet sim-farm serve`: collects until SIGTERM."""
    config = load_config(SimFarmConfig, "graspfleet sim-farm serve", argv)
    logs.configure_logging("sim-farm", config.log_level, config.log_format)
    create_server(config).wait()
