"""The control loop shared by robot agents and sim-farm workers.

Per episode: reset (x0 with the arm out of view), then per timestep observe →
choose a command → execute, until the gripper closes; then lift and detect
success. Commands come from a chooser: a local policy (random exploration, the
oracle) or the servo-planner over gRPC (CEM on the served model, optionally
ε-mixed with random commands). Every step records the model version that chose
it, so a model rollout can be traced in the data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from prometheus_client import Histogram

from graspfleet.v1 import common_pb2, servo_planner_pb2
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


class PlannerUnavailable(RuntimeError):
    """The planner (or the predictor behind it) did not answer: the arm must stop."""


@dataclass(frozen=True)
class Choice:
    action: Action
    predicted_success: float | None = None
    model: common_pb2.ModelRef | None = None


@dataclass
class StepTrace:
    observation: Observation
    choice: Choice
    seconds: float


@dataclass
class EpisodeRun:
    seed: int
    x0: Observation
    object_ids: tuple[str, ...]
    steps: list[StepTrace] = field(default_factory=list)
    success: bool | None = None  # None: aborted before the grasp
    final_pose: object = None
    abort_reason: str = ""


class LocalChooser:
    """Commands from a robots.policies policy (random exploration, the oracle)."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.name = policy.name

    def begin(self, x0: Observation, seed: int, max_steps: int) -> None:
        self.policy.begin(np.random.default_rng(seed + 1), max_steps)

    def choose(self, observation: Observation, step: int, steps_left: int) -> Choice:
        return Choice(self.policy.act(observation, step, steps_left))


class PlannerChooser:
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

    def choose(self, observation: Observation, step: int, steps_left: int) -> Choice:
        if steps_left <= 1:
            return Choice(Action(CLOSE, np.array([0.0, 0.0, 0.0, 0.0, 1.0])))
        pose = observation.pose
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
                min_m=common_pb2.Vec3(
                    x=self.workspace.low[0], y=self.workspace.low[1], z=self.workspace.low[2]
                ),
                max_m=common_pb2.Vec3(
                    x=self.workspace.high[0], y=self.workspace.high[1], z=self.workspace.high[2]
                ),
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
        action = Action(
            _FROM_KIND[response.command.kind],
            np.array([m.dx_cm, m.dy_cm, m.dz_cm, m.sin_dyaw, m.cos_dyaw]),
        )
        if response.random:
            return Choice(action)
        return Choice(action, float(response.predicted_success), response.model)


def safe_motion(motion: np.ndarray, max_step_cm: float) -> np.ndarray:
    """Arm safety on the agent's side: finite numbers, at most one step's length, a unit rotation."""
    motion = np.nan_to_num(np.asarray(motion, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    length = np.linalg.norm(motion[:3])
    if length > max_step_cm:
        motion[:3] *= max_step_cm / length
    norm = math.hypot(motion[3], motion[4])
    motion[3:] = (0.0, 1.0) if norm < 1e-6 else motion[3:] / norm
    return motion


def run_episode(driver, chooser, seed: int, max_steps: int, robot_id: str) -> EpisodeRun:
    """One grasp attempt. A PlannerUnavailable mid-episode stops the arm where it is and aborts the episode."""
    start = driver.reset(seed)
    run = EpisodeRun(seed=seed, x0=start.x0, object_ids=start.object_ids)
    chooser.begin(start.x0, seed, max_steps)
    max_step_cm = driver.arm.world.workspace.max_step_cm
    for step in range(max_steps):
        began = time.perf_counter()
        observation = driver.observe()
        try:
            choice = chooser.choose(observation, step, max_steps - step)
        except PlannerUnavailable as err:
            run.abort_reason = str(err)
            run.final_pose = driver.pose()
            return run  # the arm holds still: nothing more is executed
        if step == max_steps - 1 and choice.action.kind != CLOSE:
            choice = Choice(
                Action(CLOSE, np.array([0.0, 0.0, 0.0, 0.0, 1.0])),
                choice.predicted_success,
                choice.model,
            )
        action = Action(choice.action.kind, safe_motion(choice.action.motion, max_step_cm))
        choice = Choice(action, choice.predicted_success, choice.model)
        if action.kind != CLOSE:
            driver.move(action.motion, raised=action.kind == RAISE)
        seconds = time.perf_counter() - began
        CONTROL_STEP_SECONDS.labels(robot_id).observe(seconds)
        run.steps.append(StepTrace(observation, choice, seconds))
        if action.kind == CLOSE:
            break
    run.final_pose = driver.pose()
    run.success = driver.grasp()
    return run
