"""The sim-farm's gRPC service: collections, their shards' state, and the engine that runs them."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client import Counter

from graspfleet.v1 import common_pb2, sim_farm_pb2, sim_farm_pb2_grpc
from robots.config import PROFILES
from robots.inventory import InventoryError, parse_arm
from robots.names import RANDOMIZATION_NAMES
from robots.objects import ObjectSet
from services.common import auth, clock, logs
from services.common.config import ConfigError, load_config
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.common.names import check_name
from services.common.server import ServiceServer, stop_signals
from services.episode_store import client
from services.episode_store.client.spool import EpisodeSpool, Uploader
from services.sim_farm.collector import Collector, make_collector
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.events import (
    EpisodeStored,
    Event,
    ShardCounted,
    ShardFailed,
    ShardFinished,
    ShardStarted,
    ShardStopped,
)
from services.sim_farm.plan import POLICY_NAMES, CollectionPlan, plan_collection
from services.sim_farm.resume import ResumeConflict, stored_outcomes

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

MAX_STEPS_LIMIT = 50
# Who may start and stop collections: people, and the trainer (its evaluations).
COLLECTORS = (*auth.PEOPLE, "trainer")
ENDED = frozenset(
    {
        State.COLLECTION_STATE_SUCCEEDED,
        State.COLLECTION_STATE_FAILED,
        State.COLLECTION_STATE_STOPPED,
    }
)


@dataclass
class _Collection:
    message: sim_farm_pb2.Collection
    shards: list[sim_farm_pb2.ShardStatus]
    domain: str  # the metrics' label
    stopping: bool = False
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
    if spec.policy.kind not in POLICY_NAMES:
        raise InvalidArgument(
            "policy.kind must be KIND_RANDOM, KIND_ORACLE, KIND_NOISY_ORACLE, KIND_CEM or "
            "KIND_EPSILON_MIX"
        )
    needs_planner = spec.policy.kind in (Policy.KIND_CEM, Policy.KIND_EPSILON_MIX)
    if needs_planner and not config.planner_address:
        raise FailedPrecondition(
            "CEM collection needs the servo-planner: start the farm with --planner-address"
        )
    servoing = spec.policy.servoing
    if (servoing.close_ratio or servoing.raise_ratio) and not needs_planner:
        raise InvalidArgument("policy.servoing applies to CEM and ε-mix collection only")
    if not 0.0 <= servoing.raise_ratio <= 1.0 or not 0.0 <= servoing.close_ratio <= 1.0:
        raise InvalidArgument(
            f"policy.servoing close_ratio={servoing.close_ratio:g} and raise_ratio="
            f"{servoing.raise_ratio:g} must be in 0..1 (0 takes the planner's setting)"
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
    if spec.policy.kind == Policy.KIND_NOISY_ORACLE:
        simulated = (
            parse_arm(spec.arm_config_yaml, "arm_config_yaml").driver == "sim"
            if spec.arm_config_yaml
            else spec.domain == common_pb2.DOMAIN_SIM
        )
        if not simulated:
            raise InvalidArgument(
                "KIND_NOISY_ORACLE reads privileged object state: collect it on a simulated "
                "arm (domain DOMAIN_SIM or an arm_config_yaml with driver sim); real and "
                "proxy-real arms explore with KIND_RANDOM or the planner"
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
    """The collections of this farm; the collector runs them and its events keep them current.

    Args:
        config: The farm's settings.
        collector: Runs the shards (`make_collector(config)`).
    """

    def __init__(self, config: SimFarmConfig, collector: Collector) -> None:
        self.config = config
        self.collector = collector
        self.collections: dict[str, _Collection] = {}
        self.order: list[str] = []
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, name="sim-farm-events", daemon=True)
        self._thread.start()
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
        """Starts a collection's shards; the same id and spec again rejoins the running one."""
        auth.authorize(context, COLLECTORS, "start collections")
        spec = sim_farm_pb2.CollectionSpec()
        spec.CopyFrom(request.spec)
        validate(spec, self.config)
        # The id names the shard's spool folder and prefixes every episode id (<= 128).
        collection_id = check_name(
            "collection_id", request.collection_id or f"col-{uuid.uuid4().hex[:10]}", 100
        )
        _fill_defaults(spec, self.config)
        plan = plan_collection(collection_id, spec)
        with self.lock:
            running = self.collections.get(collection_id)
        if running is not None:
            # Rejoining is for the same collection; another spec under its id is refused.
            if plan_collection(collection_id, running.message.spec).fingerprint() != (
                plan.fingerprint()
            ):
                raise AlreadyExists(
                    f"collection {collection_id} exists on this farm with another spec "
                    "(GetCollection shows it); start the new one under a new collection id"
                )
            return self._snapshot(running)
        if spec.skip_stored:
            self._check_resumable(plan)
        with self.lock:
            if collection_id in self.collections:
                return self._snapshot(self.collections[collection_id])
            # Under the farm's lock (then each collection's, the order used throughout),
            # so two starts at once cannot both take the last place.
            active = sum(self._snapshot(c).state not in ENDED for c in self.collections.values())
            if active >= self.config.max_active_collections:
                raise ResourceExhausted(
                    f"the farm runs {active} collections already (max_active_collections="
                    f"{self.config.max_active_collections}); start this one when one ends, or "
                    "stop one (ListCollections shows them)"
                )
            collection = _Collection(
                message=sim_farm_pb2.Collection(
                    collection_id=collection_id,
                    spec=spec,
                    state=State.COLLECTION_STATE_PENDING,
                    created_at=clock.now(),
                ),
                shards=[
                    sim_farm_pb2.ShardStatus(
                        index=index,
                        state=State.COLLECTION_STATE_PENDING,
                        episodes_target=len(plan.shard_episodes(index)),
                    )
                    for index in range(plan.num_shards)
                ],
                domain=plan.domain,
            )
            self.collections[collection_id] = collection
            self.order.append(collection_id)
        try:
            self.collector.start(plan)
        except Exception:
            # Not started: a retry with the same id must try again, not find a ghost.
            with self.lock:
                del self.collections[collection_id]
                self.order.remove(collection_id)
            raise
        log.info(
            "collection started",
            extra={
                "collection": collection_id,
                "episodes": spec.num_episodes,
                "backend": self.collector.backend.name,
            },
        )
        return self._snapshot(collection)

    def _check_resumable(self, plan: CollectionPlan) -> None:
        """Refuses to resume a collection whose stored episodes another plan collected."""
        address = self.config.store_address
        try:
            channel, stub = client.connect(address)
            with channel:
                stored_outcomes(stub, plan)
        except ResumeConflict as err:
            raise FailedPrecondition(str(err)) from None
        except grpc.RpcError as err:
            raise Unavailable(
                f"cannot list what the episode store at {address} holds of collection "
                f"{plan.collection_id} to resume it ({err.code().name}: {err.details()}); "
                "retry when the store is up"
            ) from None

    def GetCollection(self, request, context):
        """The collection's state, counts and shards."""
        return self._snapshot(self._find(request.collection_id))

    def ListCollections(self, request, context):
        """Every collection this farm knows, newest first."""
        with self.lock:
            ids = list(reversed(self.order))
        return sim_farm_pb2.ListCollectionsResponse(
            collections=[self._snapshot(self.collections[i]) for i in ids]
        )

    def StopCollection(self, request, context):
        """Stops a collection's shards; the episodes already stored stay."""
        auth.authorize(context, COLLECTORS, "stop collections")
        collection = self._find(request.collection_id)
        self.collector.stop(request.collection_id)
        with collection.lock:
            collection.stopping = True
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
            message.shards.extend(collection.shards)
            message.episodes_done = sum(s.episodes_done for s in collection.shards)
            message.successes = sum(s.successes for s in collection.shards)
            states = {s.state for s in collection.shards}
            if states <= {State.COLLECTION_STATE_SUCCEEDED}:
                message.state = State.COLLECTION_STATE_SUCCEEDED
            elif State.COLLECTION_STATE_FAILED in states and not states & {
                State.COLLECTION_STATE_RUNNING,
                State.COLLECTION_STATE_PENDING,
            }:
                message.state = State.COLLECTION_STATE_FAILED
                message.error = next(s.error for s in collection.shards if s.error)
            elif collection.stopping and State.COLLECTION_STATE_RUNNING not in states:
                message.state = State.COLLECTION_STATE_STOPPED
            elif State.COLLECTION_STATE_RUNNING in states or states & ENDED:
                message.state = State.COLLECTION_STATE_RUNNING
            return message

    # -- events ----------------------------------------------------------------------

    def _follow(self) -> None:
        for event in self.collector.events():
            try:
                self._apply(event)
            except Exception:  # noqa: BLE001 - one bad event must not end the bookkeeping
                log.exception("cannot apply a shard event", extra={"event": repr(event)})

    def _apply(self, event: Event) -> None:
        """One shard event, into the collection's state and the farm's metrics."""
        with self.lock:
            collection = self.collections.get(event.collection_id)
        if collection is None:
            return
        with collection.lock:
            shard = collection.shards[event.shard]
            if shard.state in ENDED:
                return  # e.g. a stopped shard's Job reporting once more before it went
            if isinstance(event, ShardStarted):
                shard.state = State.COLLECTION_STATE_RUNNING
                shard.worker = event.worker
            elif isinstance(event, EpisodeStored):
                shard.episodes_done += 1
                shard.successes += int(event.success)
                if not event.resumed:  # collected by an earlier run of the same collection
                    EPISODES.labels(collection.domain).inc()
                    SUCCESSES.labels(collection.domain).inc(int(event.success))
                    PHYSICS_STEPS.inc(event.physics_steps)
                    RENDERS.inc(event.renders)
            elif isinstance(event, ShardCounted):
                EPISODES.labels(collection.domain).inc(max(0, event.episodes - shard.episodes_done))
                SUCCESSES.labels(collection.domain).inc(max(0, event.successes - shard.successes))
                shard.episodes_done, shard.successes = event.episodes, event.successes
                if event.episodes and shard.state == State.COLLECTION_STATE_PENDING:
                    shard.state = State.COLLECTION_STATE_RUNNING
            elif isinstance(event, ShardFinished):
                shard.state = State.COLLECTION_STATE_SUCCEEDED
            elif isinstance(event, ShardStopped):
                shard.state = State.COLLECTION_STATE_STOPPED
            elif isinstance(event, ShardFailed):
                shard.state = State.COLLECTION_STATE_FAILED
                shard.error = event.error
                log.error(
                    "shard failed",
                    extra={
                        "collection": event.collection_id,
                        "shard": event.shard,
                        "error": event.error,
                    },
                )
            if all(s.state in ENDED for s in collection.shards):
                collection.message.finished_at.CopyFrom(clock.now())

    def close(self) -> None:
        """Stops following the collections.

        Local shards stop (their episodes stay spooled or stored); Kubernetes Jobs run on.
        """
        self.collector.close()
        self._thread.join(timeout=5)


def _fill_defaults(spec: sim_farm_pb2.CollectionSpec, config: SimFarmConfig) -> None:
    """The spec's unset fields, as the farm runs them (what GetCollection shows)."""
    spec.num_shards = spec.num_shards or min(spec.num_episodes, config.workers)
    spec.max_steps = spec.max_steps or 8
    spec.objects_per_bin = spec.objects_per_bin or 5
    spec.object_set = spec.object_set or (
        "real-train" if spec.domain == common_pb2.DOMAIN_REAL else "train"
    )
    spec.profile = spec.profile or "default"
    if not spec.image_size.width:
        width, height = PROFILES[spec.profile]
        spec.image_size.CopyFrom(common_pb2.ImageSize(width=width, height=height))


def create_server(config: SimFarmConfig, *, kubernetes_api=None) -> ServiceServer:
    """Starts the farm; SERVING once it follows its shards and leftover spools are being flushed.

    Args:
        config: The farm's settings.
        kubernetes_api: With collection_backend kubernetes, a `kubernetes.client.ApiClient`
            to use instead of the one `config.k8s_api` describes (tests aim it at a local
            API server).

    Raises:
        ConfigError: collection_backend kubernetes, and k8s_api finds no API server.
    """
    servicer = SimFarmServicer(config, make_collector(config, kubernetes_api))
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
    stop = stop_signals()  # before the port file: a SIGTERM from then on drains
    try:
        server = create_server(config)
    except ConfigError as err:
        raise SystemExit(f"graspfleet sim-farm serve: configuration error: {err}") from None
    server.wait(stop=stop)
