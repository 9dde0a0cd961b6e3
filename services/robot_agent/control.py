"""What robot agents and sim-farm workers add to the episode loop of robots.episode.

The servo-planner as a command source (CEM on the served model, optionally
ε-mixed with random commands; every step records the model version that chose
it), the agent-side safety rules every command passes through, and the
control-step latency metric.
"""

from __future__ import annotations

import dataclasses
import math

import grpc
import numpy as np
from prometheus_client import Histogram

from graspfleet.v1 import common_pb2, servo_planner_pb2
from robots.episode import CLOSE_NOW, Abort, EpisodeResult, run_episode
from robots.policies import CLOSE, MOVE, RAISE, Action
from robots.world import Observation

CONTROL_STEP_SECONDS = Histogram(
    "graspfleet_agent_control_step_seconds",
    "One control step: observe, choose the command, execute it; seconds.",
    ["robot_id"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
_KIND = {
    MOVE: common_pb2.Command.KIND_MOVE,
    CLOSE: common_pb2.Command.KIND_CLOSE,
    RAISE: common_pb2.Command.KIND_RAISE,
}
_FROM_KIND = {v: k for k, v in _KIND.items()}


class PlannerUnavailable(Abort):
    """The planner (or the predictor behind it) did not answer: the arm must stop."""


class PlannerPolicy:
    """Commands from the servo-planner: CEM over the grasp model, ε-mixed if asked.

    Args:
        stub: ServoPlannerStub.
        robot_id: Sent with every request (for the planner's logs and metrics).
        workspace: The arm's workspace (a robots.config.Workspace).
        model: The model label or version to plan with.
        epsilon: Probability of a random command at each step (exploration).
        timeout_s: Deadline of one PlanStep.
        encode: Turns an RGB array into an Image message.
    """

    def __init__(
        self,
        stub,
        robot_id,
        workspace,
        model: common_pb2.ModelRef,
        epsilon: float,
        timeout_s: float,
        encode,
    ) -> None:
        self.stub = stub
        self.robot_id = robot_id
        self.workspace = workspace
        self.model = model
        self.epsilon = epsilon
        self.timeout_s = timeout_s
        self.encode = encode
        self.name = "eps-mix" if epsilon else "cem"
        self._x0 = None
        self._seed = 0

    def begin(self, x0: Observation, seed: int, max_steps: int) -> None:
        self._x0 = self.encode(x0.rgb)
        self._seed = seed

    def act(self, observation: Observation, step: int, steps_left: int) -> Action:
        if steps_left <= 1:
            return Action(CLOSE, CLOSE_NOW)
        pose = observation.pose
        low, high = self.workspace.low, self.workspace.high
        request = servo_planner_pb2.PlanStepRequest(
            robot_id=self.robot_id,
            x0=self._x0,
            xt=self.encode(observation.rgb),
            current_pose=common_pb2.Pose(
                position_m=common_pb2.Vec3(
                    x=pose.position[0], y=pose.position[1], z=pose.position[2]
                ),
                yaw_rad=pose.yaw,
                gripper_closure=pose.gripper_closure,
            ),
            workspace=common_pb2.Workspace(
                min_m=common_pb2.Vec3(x=low[0], y=low[1], z=low[2]),
                max_m=common_pb2.Vec3(x=high[0], y=high[1], z=high[2]),
                max_step_cm=self.workspace.max_step_cm,
            ),
            model=self.model,
            step_index=step,
            epsilon=self.epsilon,
            seed=(self._seed * 1000 + step) % (1 << 63),
        )
        try:
            response = self.stub.PlanStep(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise PlannerUnavailable(f"servo-planner: {err.code().name}: {err.details()}") from None
        m = response.command.motion
        motion = np.array([m.dx_cm, m.dy_cm, m.dz_cm, m.sin_dyaw, m.cos_dyaw])
        kind = _FROM_KIND[response.command.kind]
        if response.random:
            return Action(kind, motion)
        return Action(kind, motion, float(response.predicted_success), response.model)


def safe_motion(motion: np.ndarray, max_step_cm: float) -> np.ndarray:
    """Arm safety on the agent's side: finite numbers, at most one step's length, a unit rotation."""
    motion = np.nan_to_num(np.asarray(motion, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    length = np.linalg.norm(motion[:3])
    if length > max_step_cm:
        motion[:3] *= max_step_cm / length
    norm = math.hypot(motion[3], motion[4])
    motion[3:] = (0.0, 1.0) if norm < 1e-6 else motion[3:] / norm
    return motion


class SafePolicy:
    """Wraps any command source so nothing unsafe reaches the arm, whatever the source says."""

    def __init__(self, policy, max_step_cm: float) -> None:
        self.policy = policy
        self.max_step_cm = max_step_cm
        self.name = policy.name

    def begin(self, x0: Observation, seed: int, max_steps: int) -> None:
        self.policy.begin(x0, seed, max_steps)

    def act(self, observation: Observation, step: int, steps_left: int) -> Action:
        action = self.policy.act(observation, step, steps_left)
        return dataclasses.replace(action, motion=safe_motion(action.motion, self.max_step_cm))


def run_arm_episode(driver, policy, seed: int, max_steps: int, robot_id: str) -> EpisodeResult:
    """One episode on a robot driver, with the agent's safety rules and control-step metrics."""
    safe = SafePolicy(policy, driver.arm.world.workspace.max_step_cm)
    histogram = CONTROL_STEP_SECONDS.labels(robot_id)
    return run_episode(
        driver, safe, seed, max_steps, on_step=lambda record: histogram.observe(record.seconds)
    )
