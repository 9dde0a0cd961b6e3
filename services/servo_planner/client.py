"""The servo-planner as an arm's command source: CEM on the served model, ε-mixed if asked.

Every step sends the arm's images, pose and workspace in one PlanStep and
records the model version that chose the command. A planner (or predictor)
that does not answer raises `PlannerUnavailable`, an `Abort`: the episode ends
where the arm stands.
"""

from __future__ import annotations

import grpc
import numpy as np

from graspfleet.v1 import common_pb2, servo_planner_pb2
from models.episodes.records import ACTION_FROM_KIND
from robots.episode import CLOSE_NOW, Abort
from robots.policies import CLOSE, Action
from robots.world import Observation


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
        servoing: The servoing thresholds to plan with; the planner's own when empty.
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
        servoing: common_pb2.ServoingParams | None = None,
    ) -> None:
        self.stub = stub
        self.robot_id = robot_id
        self.workspace = workspace
        self.model = model
        self.epsilon = epsilon
        self.timeout_s = timeout_s
        self.encode = encode
        self.servoing = servoing or common_pb2.ServoingParams()
        self.name = "eps-mix" if epsilon else "cem"
        self._x0 = None
        self._seed = 0

    def begin(self, x0: Observation, seed: int, max_steps: int) -> None:
        """Encodes x0 once for the episode's requests and keeps the episode's seed."""
        self._x0 = self.encode(x0.rgb)
        self._seed = seed

    def act(self, observation: Observation, step: int, steps_left: int) -> Action:
        """The planner's command for this step; CLOSE on the last step.

        Raises:
            PlannerUnavailable: the PlanStep call failed.
        """
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
            servoing=self.servoing,
        )
        try:
            response = self.stub.PlanStep(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise PlannerUnavailable(f"servo-planner: {err.code().name}: {err.details()}") from None
        m = response.command.motion
        motion = np.array([m.dx_cm, m.dy_cm, m.dz_cm, m.sin_dyaw, m.cos_dyaw])
        kind = ACTION_FROM_KIND[response.command.kind]
        if response.random:
            return Action(kind, motion)
        return Action(kind, motion, float(response.predicted_success), response.model)
