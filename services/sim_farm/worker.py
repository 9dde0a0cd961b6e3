"""One collection shard: a simulated arm, a policy, episodes streamed to the store, events."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from models.episodes import records as episodes
from models.episodes.shards import COLLECTION_PLAN, EVALUATION, PURPOSE
from robots.config import ArmConfig, CameraConfig, WorldConfig
from robots.drivers import make_driver
from robots.inventory import parse_arm
from robots.policies import NoisyOraclePolicy, OraclePolicy, RandomPolicy
from robots.safety import run_safe_episode
from services.common import auth, upstream
from services.episode_store import client
from services.episode_store.client.spool import EpisodeSpool, Uploader
from services.servo_planner.client import PlannerPolicy
from services.sim_farm.events import (
    EpisodeStored,
    Event,
    ShardFailed,
    ShardFinished,
    ShardStopped,
)
from services.sim_farm.plan import ShardJob
from services.sim_farm.resume import stored_outcomes

POLICIES = ("random", "oracle", "cem", "eps-mix")


def episode_id(collection_id: str, shard: int, index: int) -> str:
    """The deterministic id of a collection's episode: a rerun finds what is stored."""
    return f"{collection_id}-s{shard:03d}-e{index:06d}"


def episode_seed(collection_seed: int, shard: int, index: int) -> int:
    """A stable seed per episode: the same collection seed replays the same episodes."""
    digest = hashlib.sha256(f"{collection_seed}:{shard}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def shard_robot_id(shard: int) -> str:
    """The robot id of a shard's simulated arm.

    The store groups a collection's counts by it, and accepts its episodes from the
    sim-farm's identity alone.
    """
    return f"{auth.SIM_FARM_SHARD_PREFIX}{shard}"


class Progress(Protocol):
    """Where a shard reports: a multiprocessing queue, or the shard command's log."""

    def put(self, event: Event) -> None:
        """Reports one event."""


class Stop(Protocol):
    """Set when the shard should end after its current episode.

    A multiprocessing or a threading Event.
    """

    def is_set(self) -> bool:
        """True once the shard should stop."""


def _policy(job: ShardJob, driver):
    plan, settings = job.plan, job.settings
    if plan.policy == "random":
        return RandomPolicy(driver.world)
    if plan.policy == "oracle":
        return OraclePolicy(driver.world)
    if plan.policy == "noisy-oracle":
        return NoisyOraclePolicy(driver.world)
    from graspfleet.v1 import common_pb2, refiner_pb2_grpc, servo_planner_pb2_grpc
    from services.common.images import encode_image
    from services.refiner.client.canonicalizing import CanonicalizingPolicy

    stub = servo_planner_pb2_grpc.ServoPlannerStub(upstream.channel(settings.planner_address))
    model = common_pb2.ModelRef(name="grasp_success", version=plan.model_version)
    if not plan.model_version:
        model.label = plan.model_label or "stable"
    policy = PlannerPolicy(
        stub,
        driver.arm.id,
        driver.arm.world.workspace,
        model,
        plan.epsilon if plan.policy == "eps-mix" else 0.0,
        settings.plan_timeout_s,
        encode_image,
        common_pb2.ServoingParams(close_ratio=plan.close_ratio, raise_ratio=plan.raise_ratio),
    )
    if not plan.transform_kind:
        return policy
    refiner = refiner_pb2_grpc.RefinerStub(upstream.channel(settings.refiner_address))
    transform_model = common_pb2.ModelRef(version=plan.transform_version)
    if not plan.transform_version:
        transform_model.label = plan.transform_label or "stable"
    return CanonicalizingPolicy(
        policy, refiner, transform_model, settings.plan_timeout_s, kind=plan.transform_kind
    )


def shard_arm(job: ShardJob) -> ArmConfig:
    """The arm a shard drives: the plan's arm configuration, or one built from its fields."""
    plan = job.plan
    if plan.arm_config_yaml:
        arm = parse_arm(plan.arm_config_yaml, f"collection {plan.collection_id}")
        # The collection's seed makes the scenes: the same seed gives every model the same ones.
        world = replace(arm.world, seed=plan.seed)
        return replace(arm, id=shard_robot_id(job.shard), world=world)
    world = WorldConfig(
        domain=plan.domain,
        randomization=plan.randomization,
        object_set=plan.object_set,
        objects_per_bin=plan.objects_per_bin,
        camera=CameraConfig(width=plan.width, height=plan.height),
        seed=plan.seed,
    )
    return ArmConfig(id=shard_robot_id(job.shard), driver=plan.domain, world=world)


def _stored(job: ShardJob) -> dict[str, bool]:
    """This collection's episodes already in the store, id -> success (empty unless resuming).

    Raises:
        ResumeConflict: the store holds episodes of this id from another plan.
    """
    if not job.plan.skip_stored:
        return {}
    channel, stub = client.connect(job.settings.store_address)
    with channel:
        return stored_outcomes(stub, job.plan)


class StoreStalled(RuntimeError):
    """The store took none of a shard's spooled episodes for `upload_stall_s`."""


def _wait_for_store(
    job: ShardJob, uploader: Uploader, spool: EpisodeSpool, stop: Stop, ready: Callable[[], bool]
) -> bool:
    """Waits until `ready()` while the store drains the spool; False when stopped first.

    What is spooled stays on disk whatever happens: a stopped or failed shard's
    episodes are sent when the farm next starts.

    Raises:
        StoreStalled: the spool did not shrink for `upload_stall_s`.
    """
    stall_s = job.settings.upload_stall_s
    depth, since = spool.depth(), time.monotonic()
    while not ready():
        if stop.is_set():
            return False
        uploader.wait_idle(min(1.0, stall_s))
        if spool.depth() < depth:
            depth, since = spool.depth(), time.monotonic()
        elif time.monotonic() - since > stall_s:
            raise StoreStalled(
                f"the episode store at {job.settings.store_address} took none of this shard's "
                f"{spool.depth()} spooled episodes for {stall_s:.0f} s (last error: "
                f"{uploader.last_error or 'none'}); they stay in {spool.root} and are sent "
                "when the sim-farm next starts"
            )
    return not stop.is_set()


def run_shard(job: ShardJob, progress: Progress, stop: Stop) -> Event:
    """Runs a shard to its end or until `stop` is set.

    Reports every episode to `progress` as an EpisodeStored, then how the shard
    ended (ShardFinished, ShardStopped or ShardFailed), which it also returns.
    """
    plan = job.plan
    arm = shard_arm(job)
    spool = EpisodeSpool(
        Path(job.settings.spool_dir) / plan.collection_id / f"shard-{job.shard}",
        arm.id,
        max_bytes=job.settings.spool_max_bytes,
    )
    uploader = Uploader(spool, lambda: job.settings.store_address).start()
    ending: Event = ShardFinished(plan.collection_id, job.shard)
    try:
        stored = _stored(job)
        fingerprint = plan.fingerprint()
        with make_driver(arm) as driver:
            driver.world.render_canonical = plan.render_canonical
            policy = _policy(job, driver)
            physics, renders = driver.world.physics_steps, driver.world.renders
            for i in job.episodes:
                if not _wait_for_store(job, uploader, spool, stop, lambda: not spool.full()):
                    ending = ShardStopped(plan.collection_id, job.shard)
                    break
                episode = episode_id(plan.collection_id, job.shard, i)
                if episode in stored:
                    progress.put(
                        EpisodeStored(
                            plan.collection_id, job.shard, episode, stored[episode], resumed=True
                        )
                    )
                    continue
                run = run_safe_episode(
                    driver, policy, episode_seed(plan.seed, job.shard, i), plan.max_steps
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
                    collection_id=plan.collection_id,
                    model=episodes.driving_model(run),
                    with_masks=plan.render_masks,
                )
                record.header.attributes[COLLECTION_PLAN] = fingerprint
                if plan.evaluation:
                    record.header.attributes[PURPOSE] = EVALUATION
                uploader.submit(record)
                world = driver.world
                progress.put(
                    EpisodeStored(
                        plan.collection_id,
                        job.shard,
                        episode,
                        bool(run.success),
                        physics_steps=world.physics_steps - physics,
                        renders=world.renders - renders,
                    )
                )
                physics, renders = world.physics_steps, world.renders
        # Everything collected reaches the store before the shard counts as done.
        _wait_for_store(job, uploader, spool, stop, lambda: spool.depth() == 0)
        if spool.depth():
            ending = ShardStopped(plan.collection_id, job.shard)
    except Exception as err:  # noqa: BLE001 - the farm must hear why a shard died
        ending = ShardFailed(plan.collection_id, job.shard, f"{type(err).__name__}: {err}")
    finally:
        uploader.stop()
    progress.put(ending)
    return ending
