"""One arm's agent: the grasp loop in a thread, safe stops, the spool, metrics and status."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
from prometheus_client import Counter, Gauge

from graspfleet.v1 import common_pb2, refiner_pb2_grpc, robot_agent_pb2, servo_planner_pb2_grpc
from models.episodes import records as episodes
from robots.drivers import make_driver
from robots.inventory import find_arm
from robots.names import ARM_DOMAIN_VALUES, DOMAIN_NAMES
from robots.policies import RandomPolicy
from services.common import clock, logs, upstream
from services.common.images import encode_image
from services.episode_store.client.spool import EpisodeSpool, Uploader
from services.refiner.client.canonicalizing import CanonicalizingPolicy
from services.robot_agent.config import AgentConfig
from services.robot_agent.control import run_arm_episode
from services.servo_planner.client import PlannerPolicy

log = logs.get_logger(__name__)

ATTEMPTS = Counter(
    "graspfleet_agent_grasp_attempts_total",
    "Grasp attempts with a known outcome, by the model version that drove them.",
    ["robot_id", "model_version", "domain"],
)
SUCCESSES = Counter(
    "graspfleet_agent_grasp_successes_total",
    "Successful grasps, by the model version that drove them.",
    ["robot_id", "model_version", "domain"],
)
ABORTED = Counter(
    "graspfleet_agent_episodes_aborted_total",
    "Episodes stopped before the grasp (safe stops).",
    ["robot_id"],
)
STATE = Gauge(
    "graspfleet_agent_state",
    "AgentState enum value (2 running, 3 paused, 4 safe stop).",
    ["robot_id"],
)
# The state above flickers between safe stop and running while the arm retries
# every safe_stop_retry_s; this one holds 1 for the whole outage.
SAFE_STOPPED = Gauge(
    "graspfleet_agent_safe_stopped",
    "1 from a safe stop until the arm next ends an episode with a known outcome (or pauses), "
    "else 0.",
    ["robot_id"],
)
SPOOL_MAX_BYTES = Gauge(
    "graspfleet_agent_spool_max_bytes",
    "The spool's byte cap (spool_max_bytes): at it the arm pauses collecting. The spool label "
    "is the one of graspfleet_spool_bytes.",
    ["spool"],
)


class Agent:
    """Drives one arm until stopped. Thread-safe status; pause and resume between episodes."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.arm = find_arm(config.robot_id, Path(config.inventory_dir))
        self.domain = self.arm.domain
        self.spool = EpisodeSpool(
            Path(config.spool_dir) / config.robot_id,
            config.robot_id,
            max_bytes=config.spool_max_bytes,
        )
        self.uploader = Uploader(self.spool, lambda: config.store_address)
        self.channel = upstream.channel(config.planner_address)
        self.planner = servo_planner_pb2_grpc.ServoPlannerStub(self.channel)
        self.refiner_channel = (
            upstream.channel(config.refiner_address) if config.canonicalize else None
        )
        self.rng = np.random.default_rng(config.seed or self.arm.world.seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._thread = threading.Thread(
            target=self._loop, name=f"agent-{config.robot_id}", daemon=True
        )
        self.attempted = 0
        self.succeeded = 0
        self.model = common_pb2.ModelRef()
        self.last_error = ""
        SPOOL_MAX_BYTES.labels(self.spool.name).set(config.spool_max_bytes)
        self._set_state(robot_agent_pb2.AGENT_STATE_STARTING)

    def _set_state(self, state: int) -> None:
        with self._lock:
            self.state = state
        STATE.labels(self.config.robot_id).set(state)
        if state == robot_agent_pb2.AGENT_STATE_SAFE_STOP:
            SAFE_STOPPED.labels(self.config.robot_id).set(1)
        elif state != robot_agent_pb2.AGENT_STATE_RUNNING:
            # Starting, paused or stopped: not held by a safe stop. Running after a
            # safe stop is the retry; only a finished grasp ends the outage.
            SAFE_STOPPED.labels(self.config.robot_id).set(0)

    def start(self) -> Agent:
        """Starts the uploader and the episode loop; returns the agent."""
        self.uploader.start()
        self._thread.start()
        return self

    def _policy(self, driver):
        if self.config.exploration == "random":
            policy = RandomPolicy(driver.world)
        else:
            policy = PlannerPolicy(
                self.planner,
                self.config.robot_id,
                self.arm.world.workspace,
                common_pb2.ModelRef(name=self.config.model_name, label=self.config.model_label),
                self.config.epsilon if self.config.exploration == "eps-mix" else 0.0,
                self.config.plan_timeout_s,
                encode_image,
            )
        if self.refiner_channel is None:
            return policy
        return CanonicalizingPolicy(
            policy,
            refiner_pb2_grpc.RefinerStub(self.refiner_channel),
            common_pb2.ModelRef(label=self.config.rcan_model_label),
            self.config.refine_timeout_s,
        )

    def _loop(self) -> None:
        try:
            with make_driver(self.arm) as driver:
                policy = self._policy(driver)
                self._set_state(robot_agent_pb2.AGENT_STATE_RUNNING)
                while not self._stop.is_set():
                    if self.config.episodes and self.attempted >= self.config.episodes:
                        break
                    if not self._resume.is_set():
                        self._set_state(robot_agent_pb2.AGENT_STATE_PAUSED)
                        self._resume.wait(0.5)
                        continue
                    if self._spool_full():
                        continue
                    if self.state == robot_agent_pb2.AGENT_STATE_PAUSED:
                        self._set_state(robot_agent_pb2.AGENT_STATE_RUNNING)
                    self._episode(driver, policy)
        except Exception as err:  # noqa: BLE001 - report, never leave the status lying
            self.last_error = f"{type(err).__name__}: {err}"
            log.exception("agent loop failed", extra={"robot_id": self.config.robot_id})
        finally:
            self._set_state(robot_agent_pb2.AGENT_STATE_STOPPED)

    def _spool_full(self) -> bool:
        """Back-pressure: with the spool at its cap the arm pauses rather than fill the disk."""
        if not self.spool.full():
            return False
        if self.state != robot_agent_pb2.AGENT_STATE_PAUSED:
            self.last_error = (
                f"spool full ({self.spool.size_bytes()} of {self.config.spool_max_bytes} bytes): "
                "collecting pauses until the store takes the waiting episodes"
            )
            log.warning(
                "spool full: arm pauses collecting",
                extra={"robot_id": self.config.robot_id, "spool_bytes": self.spool.size_bytes()},
            )
            self._set_state(robot_agent_pb2.AGENT_STATE_PAUSED)
        self._stop.wait(0.5)
        return True

    def _episode(self, driver, policy) -> None:
        seed = int(self.rng.integers(1 << 62))
        run = run_arm_episode(driver, policy, seed, self.config.max_steps, self.config.robot_id)
        if isinstance(policy, CanonicalizingPolicy):
            run = policy.attach(run)  # the store keeps the raw images and the canonical ones
        if run.steps:
            first_model = episodes.driving_model(run)
            record = episodes.to_record(
                run,
                episode_id=f"{self.config.robot_id}-{uuid.uuid4().hex[:16]}",
                robot_id=self.config.robot_id,
                domain=self.domain,
                randomization=self.arm.world.randomization,
                policy=policy.name,
                object_set=self.arm.world.object_set,
                model=first_model,
                with_masks=self.domain == "sim",
            )
            self.uploader.submit(record)  # durable on local disk before we count it
            version = str(first_model.version) if first_model is not None else "none"
            with self._lock:
                self.attempted += 1
                if first_model is not None:
                    self.model = first_model
            domain = DOMAIN_NAMES[ARM_DOMAIN_VALUES[self.domain]]
            if run.success is None:
                ABORTED.labels(self.config.robot_id).inc()
            else:
                SAFE_STOPPED.labels(self.config.robot_id).set(0)
                ATTEMPTS.labels(self.config.robot_id, version, domain).inc()
                # inc(0) still creates the series, so a robot with no success yet reads 0, not nothing.
                SUCCESSES.labels(self.config.robot_id, version, domain).inc(int(run.success))
                if run.success:
                    with self._lock:
                        self.succeeded += 1
        if run.success is None:
            self._safe_stop(run.abort_reason)

    def _safe_stop(self, reason: str) -> None:
        """The arm holds still until the planner (and refiner) answer again; the next episode tells."""
        self.last_error = reason
        self._set_state(robot_agent_pb2.AGENT_STATE_SAFE_STOP)
        log.warning(
            "safe stop: arm holds still", extra={"robot_id": self.config.robot_id, "reason": reason}
        )
        self._stop.wait(self.config.safe_stop_retry_s)
        if not self._stop.is_set():
            self._set_state(robot_agent_pb2.AGENT_STATE_RUNNING)

    def status(self) -> robot_agent_pb2.AgentStatus:
        """The agent's status: state, exploration, domain, episode counts, spool and model."""
        now = clock.now()
        exploration = {
            "cem": robot_agent_pb2.EXPLORATION_MODE_CEM,
            "random": robot_agent_pb2.EXPLORATION_MODE_RANDOM,
            "eps-mix": robot_agent_pb2.EXPLORATION_MODE_EPSILON_MIX,
        }[self.config.exploration]
        with self._lock:
            return robot_agent_pb2.AgentStatus(
                robot_id=self.config.robot_id,
                state=self.state,
                exploration=exploration,
                domain=ARM_DOMAIN_VALUES[self.domain],
                episodes_attempted=self.attempted,
                episodes_succeeded=self.succeeded,
                spool_depth=self.spool.depth(),
                model=self.model,
                last_error=self.last_error,
                updated_at=now,
            )

    def pause(self) -> None:
        """Holds the loop before its next episode."""
        self._resume.clear()

    def resume(self) -> None:
        """Lets a paused loop go on."""
        self._resume.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Waits for the loop to end (an episode limit); True if it did."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self, drain_s: float | None = None) -> None:
        """Finishes the current episode, then gives the spool `drain_s` to reach the store.

        Args:
            drain_s: Seconds for the upload; the `spool_drain_s` setting when None.
        """
        if drain_s is None:
            drain_s = self.config.spool_drain_s
        self._stop.set()
        self._resume.set()
        self._thread.join(timeout=120)
        self.uploader.stop(drain_s=drain_s)
        self.channel.close()
        if self.refiner_channel is not None:
            self.refiner_channel.close()
