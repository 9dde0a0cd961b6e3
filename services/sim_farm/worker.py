"""One collection shard, in its own process: a simulated arm, a policy, episodes streamed to the store."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from models.episodes import records as episodes
from models.episodes.shards import EVALUATION, PURPOSE
from robots.config import ArmConfig, CameraConfig, WorldConfig
from robots.drivers import make_driver
from robots.inventory import parse_arm
from robots.policies import OraclePolicy, RandomPolicy
from robots.safety import run_safe_episode
from services.common import logs, upstream
from services.episode_store.client.spool import EpisodeSpool, Uploader
from services.servo_planner.client import PlannerPolicy

POLICIES = ("random", "oracle", "cem", "eps-mix")


@dataclass(frozen=True)
class ShardJob:
    """Everything a shard needs, picklable for a spawned process."""

    collection_id: str
    shard: int
    episodes: int
    first_episode: int
    seed: int
    max_steps: int
    domain: str  # "sim" or "proxy-real"
    randomization: str
    object_set: str
    objects_per_bin: int
    policy: str
    epsilon: float
    model_label: str
    width: int
    height: int
    render_masks: bool
    render_canonical: bool
    store_address: str
    planner_address: str
    plan_timeout_s: float
    spool_dir: str
    spool_max_bytes: int = 0  # this shard's spool cap: at it the shard waits for the store
    upload_stall_s: float = 300.0  # the store taking nothing this long fails the shard
    model_version: int = 0  # with policy cem / eps-mix: this version; 0 resolves model_label
    arm_config_yaml: str = ""  # an arm configuration's text; replaces the world fields above
    evaluation: bool = False  # tag episodes purpose=evaluation: never training data
    skip_stored: bool = False  # resume: episodes the store holds are not run again
    transform_kind: str = ""  # refiner kind applied to images before planning ("rcan")
    transform_label: str = ""
    transform_version: int = 0
    refiner_address: str = ""


def episode_id(collection_id: str, shard: int, index: int) -> str:
    """The deterministic id of a collection's episode: a rerun finds what is stored."""
    return f"{collection_id}-s{shard:03d}-e{index:06d}"


def episode_seed(collection_seed: int, shard: int, index: int) -> int:
    """A stable seed per episode: the same collection seed replays the same episodes."""
    digest = hashlib.sha256(f"{collection_seed}:{shard}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _policy(job: ShardJob, driver):
    if job.policy == "random":
        return RandomPolicy(driver.world)
    if job.policy == "oracle":
        return OraclePolicy(driver.world)
    from graspfleet.v1 import common_pb2, refiner_pb2_grpc, servo_planner_pb2_grpc
    from services.common.images import encode_image
    from services.refiner.client.canonicalizing import CanonicalizingPolicy

    stub = servo_planner_pb2_grpc.ServoPlannerStub(upstream.channel(job.planner_address))
    model = common_pb2.ModelRef(name="grasp_success", version=job.model_version)
    if not job.model_version:
        model.label = job.model_label or "stable"
    policy = PlannerPolicy(
        stub,
        driver.arm.id,
        driver.arm.world.workspace,
        model,
        job.epsilon if job.policy == "eps-mix" else 0.0,
        job.plan_timeout_s,
        encode_image,
    )
    if not job.transform_kind:
        return policy
    refiner = refiner_pb2_grpc.RefinerStub(upstream.channel(job.refiner_address))
    transform_model = common_pb2.ModelRef(version=job.transform_version)
    if not job.transform_version:
        transform_model.label = job.transform_label or "stable"
    return CanonicalizingPolicy(
        policy, refiner, transform_model, job.plan_timeout_s, kind=job.transform_kind
    )


def shard_arm(job: ShardJob) -> ArmConfig:
    """The arm a shard drives: the job's arm configuration, or one built from its fields."""
    if job.arm_config_yaml:
        arm = parse_arm(job.arm_config_yaml, f"collection {job.collection_id}")
        # The collection's seed makes the scenes: the same seed gives every model the same ones.
        world = replace(arm.world, seed=job.seed)
        return replace(arm, id=f"sim-farm-{job.shard}", world=world)
    world = WorldConfig(
        domain=job.domain,
        randomization=job.randomization,
        object_set=job.object_set,
        objects_per_bin=job.objects_per_bin,
        camera=CameraConfig(width=job.width, height=job.height),
        seed=job.seed,
    )
    return ArmConfig(id=f"sim-farm-{job.shard}", driver=job.domain, world=world)


def _stored(job: ShardJob) -> dict[str, bool]:
    """This collection's episodes already in the store, id -> success (empty unless resuming)."""
    if not job.skip_stored:
        return {}
    from graspfleet.v1 import common_pb2, episode_store_pb2
    from services.episode_store import client

    channel, stub = client.connect(job.store_address)
    with channel:
        found = client.list_all(
            stub, episode_store_pb2.EpisodeFilter(collection_id=job.collection_id)
        )
        return {e.episode_id: e.result == common_pb2.GRASP_RESULT_SUCCESS for e in found}


class StoreStalled(RuntimeError):
    """The store took none of a shard's spooled episodes for `upload_stall_s`."""


def _wait_for_store(
    job: ShardJob, uploader: Uploader, spool: EpisodeSpool, stop, ready: Callable[[], bool]
) -> bool:
    """Waits until `ready()` while the store drains the spool; False when stopped first.

    What is spooled stays on disk whatever happens: a stopped or failed shard's
    episodes are sent when the farm next starts.

    Raises:
        StoreStalled: the spool did not shrink for `job.upload_stall_s`.
    """
    depth, since = spool.depth(), time.monotonic()
    while not ready():
        if stop.is_set():
            return False
        uploader.wait_idle(min(1.0, job.upload_stall_s))
        if spool.depth() < depth:
            depth, since = spool.depth(), time.monotonic()
        elif time.monotonic() - since > job.upload_stall_s:
            raise StoreStalled(
                f"the episode store at {job.store_address} took none of this shard's "
                f"{spool.depth()} spooled episodes for {job.upload_stall_s:.0f} s (last error: "
                f"{uploader.last_error or 'none'}); they stay in {spool.root} and are sent "
                "when the sim-farm next starts"
            )
    return not stop.is_set()


def run_shard(job: ShardJob, progress, stop) -> None:
    """Runs a shard to its end or until `stop` is set; reports through `progress` (a queue)."""
    logs.configure_logging("sim-farm-worker", "INFO", "json")
    arm = shard_arm(job)
    spool = EpisodeSpool(
        Path(job.spool_dir) / job.collection_id / f"shard-{job.shard}",
        arm.id,
        max_bytes=job.spool_max_bytes,
    )
    uploader = Uploader(spool, lambda: job.store_address).start()
    try:
        stored = _stored(job)
        with make_driver(arm) as driver:
            driver.world.render_canonical = job.render_canonical
            policy = _policy(job, driver)
            for i in range(job.first_episode, job.first_episode + job.episodes):
                if not _wait_for_store(job, uploader, spool, stop, lambda: not spool.full()):
                    break
                episode = episode_id(job.collection_id, job.shard, i)
                if episode in stored:
                    progress.put(("stored", job.collection_id, job.shard, stored[episode], 0, 0))
                    continue
                run = run_safe_episode(
                    driver, policy, episode_seed(job.seed, job.shard, i), job.max_steps
                )
                if not run.steps:
                    raise RuntimeError(
                        f"episode {i} aborted before its first step: {run.abort_reason}"
                    )
                if hasattr(policy, "attach"):
                    run = policy.attach(run)
                record = episodes.to_record(
                    run,
                    episode_id=episode,
                    robot_id=arm.id,
                    domain=arm.domain,
                    randomization=arm.world.randomization,
                    policy=policy.name,
                    object_set=arm.world.object_set,
                    collection_id=job.collection_id,
                    model=episodes.driving_model(run),
                    with_masks=job.render_masks,
                )
                if job.evaluation:
                    record.header.attributes[PURPOSE] = EVALUATION
                uploader.submit(record)
                world_state = driver.world
                progress.put(
                    (
                        "episode",
                        job.collection_id,
                        job.shard,
                        bool(run.success),
                        world_state.physics_steps,
                        world_state.renders,
                    )
                )
        # Everything collected reaches the store before the shard counts as done.
        _wait_for_store(job, uploader, spool, stop, lambda: spool.depth() == 0)
        progress.put(("done", job.collection_id, job.shard, "", 0, 0))
    except Exception as err:  # noqa: BLE001 - the farm must hear why a shard died
        progress.put(("failed", job.collection_id, job.shard, f"{type(err).__name__}: {err}", 0, 0))
    finally:
        uploader.stop()
