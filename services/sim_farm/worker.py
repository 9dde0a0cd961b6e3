"""One collection shard, in its own process: a simulated arm, a policy, episodes streamed to the store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from robots.config import CameraConfig, WorldConfig
from robots.drivers import make_driver
from robots.inventory import ArmConfig
from robots.policies import OraclePolicy, RandomPolicy
from services.common import episodes, logs, upstream
from services.episode_store.spool import EpisodeSpool, Uploader
from services.robot_agent.control import PlannerPolicy, run_arm_episode

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


def episode_seed(collection_seed: int, shard: int, index: int) -> int:
    """A stable seed per episode: the same collection seed replays the same episodes."""
    digest = hashlib.sha256(f"{collection_seed}:{shard}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _policy(job: ShardJob, driver):
    if job.policy == "random":
        return RandomPolicy(driver.world)
    if job.policy == "oracle":
        return OraclePolicy(driver.world)
    from graspfleet.v1 import common_pb2, servo_planner_pb2_grpc
    from services.common.images import encode_image

    stub = servo_planner_pb2_grpc.ServoPlannerStub(upstream.channel(job.planner_address))
    return PlannerPolicy(
        stub,
        driver.arm.id,
        driver.arm.world.workspace,
        common_pb2.ModelRef(name="grasp_success", label=job.model_label or "stable"),
        job.epsilon if job.policy == "eps-mix" else 0.0,
        job.plan_timeout_s,
        encode_image,
    )


def run_shard(job: ShardJob, progress, stop) -> None:
    """Runs a shard to its end or until `stop` is set; reports through `progress` (a queue)."""
    logs.configure_logging("sim-farm-worker", "INFO", "json")
    world = WorldConfig(
        domain=job.domain,
        randomization=job.randomization,
        object_set=job.object_set,
        objects_per_bin=job.objects_per_bin,
        camera=CameraConfig(width=job.width, height=job.height),
        seed=job.seed,
    )
    arm = ArmConfig(id=f"sim-farm-{job.shard}", driver=job.domain, world=world)
    spool = EpisodeSpool(Path(job.spool_dir) / job.collection_id / f"shard-{job.shard}", arm.id)
    uploader = Uploader(spool, lambda: job.store_address).start()
    try:
        with make_driver(arm) as driver:
            driver.world.render_canonical = job.render_canonical
            policy = _policy(job, driver)
            for i in range(job.first_episode, job.first_episode + job.episodes):
                if stop.is_set():
                    break
                run = run_arm_episode(
                    driver, policy, episode_seed(job.seed, job.shard, i), job.max_steps, arm.id
                )
                if not run.steps:
                    raise RuntimeError(
                        f"episode {i} aborted before its first step: {run.abort_reason}"
                    )
                record = episodes.to_record(
                    run,
                    episode_id=f"{job.collection_id}-s{job.shard:03d}-e{i:06d}",
                    robot_id=arm.id,
                    domain=job.domain,
                    randomization=job.randomization,
                    policy=policy.name,
                    object_set=job.object_set,
                    collection_id=job.collection_id,
                    model=episodes.driving_model(run),
                    with_masks=job.render_masks,
                )
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
        while not uploader.wait_idle(5.0):
            if stop.is_set():
                break  # what is left stays spooled; the farm flushes it when it next starts
        progress.put(("done", job.collection_id, job.shard, "", 0, 0))
    except Exception as err:  # noqa: BLE001 - the farm must hear why a shard died
        progress.put(("failed", job.collection_id, job.shard, f"{type(err).__name__}: {err}", 0, 0))
    finally:
        uploader.stop()
