"""Collection policies that need no model: random exploration, the oracle and the noisy oracle.

A policy sees the world's observations and returns one command per step; the
episode runner executes it. The oracles alone read privileged state (the exact
shape and place of every object): the oracle exists to prove that grasps are
physically achievable and labels are right; the noisy oracle explores around
good grasps in simulation, where such scripted collection is legitimate.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from robots.grasp_plan import GraspPlan, plan_grasp, scan_tray
from robots.kinematics import wrap_yaw
from robots.world import TRAY_FLOOR_Z, GraspWorld, Observation

MOVE, CLOSE, RAISE = "move", "close", "raise"


@dataclass(frozen=True)
class Action:
    """One command, and what chose it (set by model-driven command sources)."""

    kind: str  # MOVE, CLOSE or RAISE
    motion: np.ndarray  # [5]: dx, dy, dz cm; sin, cos of the yaw change
    predicted_success: float | None = None
    model: object = None  # the model version that chose it (a graspfleet.v1.ModelRef)


def motion_to(current: np.ndarray, target: np.ndarray, dyaw: float = 0.0) -> np.ndarray:
    """The 5-D motion command from `current` to `target` (metres) turning the yaw by `dyaw`."""
    return np.array([*((target - current) * 100.0), math.sin(dyaw), math.cos(dyaw)])


class RandomPolicy:
    """Random exploration as in the first phase of Levine et al.'s data collection.

    Picks a random grasp point in the workspace's grasp band (its lowest
    GRASP_BAND_M, where objects lie; the policy knows the workspace, not the
    objects) and a random rotation, then heads there in noisy steps and closes
    at the last step. The servo planner's CEM searches the same box, so a model
    trained on this data is never asked about grasps outside what it saw.
    """

    name = "random"

    def __init__(self, world: GraspWorld) -> None:
        self.world = world
        self.goal = np.zeros(3)
        self.yaw_step = 0.0

    def begin(self, x0: Observation, seed: int, steps: int) -> None:
        """Draws this episode's grasp point and per-step rotation from `seed`."""
        rng = np.random.default_rng(seed + 1)
        low, high = self.world.config.workspace.grasp_band()
        self.goal = rng.uniform(low, high)
        self.yaw_step = rng.uniform(-math.pi / 2, math.pi / 2) / max(1, steps - 1)
        self.rng = rng

    def act(self, observation: Observation, step: int, steps_left: int) -> Action:
        """A noisy step towards the grasp point, or CLOSE on the last step."""
        if steps_left <= 1:
            return Action(CLOSE, motion_to(observation.pose.position, observation.pose.position))
        remaining = self.goal - observation.pose.position
        # The last step closes where the arm is, so the moves before it cover the whole way.
        move = remaining / (steps_left - 1) + self.rng.normal(0.0, 0.01, 3)
        return Action(
            MOVE,
            motion_to(observation.pose.position, observation.pose.position + move, self.yaw_step),
        )


class OraclePolicy:
    """Scripted grasps from privileged object geometry: above the object, rotate, descend, close.

    At the start of an episode it scans the tray from above (GraspWorld.scan), picks
    the pinch grasp that fits best (grasp_plan), then steers the fingertips there,
    re-aiming after every step because the commands carry noise.
    """

    name = "oracle"

    def __init__(self, world: GraspWorld) -> None:
        self.world = world
        self.above = self.grasp = np.zeros(3)
        self.grip_yaw = 0.0
        self.plan: GraspPlan | None = None

    def begin(self, x0: Observation, seed: int, steps: int) -> None:
        """Plans the grasp from a scan of the tray (the first object's middle when nothing fits)."""
        world = self.world
        plan = plan_grasp(
            scan_tray(world, resolution_m=0.006),
            list(world.body_ids),
            TRAY_FLOOR_Z,
            self._reachable,
        )
        if plan is None:
            # Nothing fits the open gripper cleanly: try the first object's middle anyway.
            low, high = world.object_aabbs()[0]
            plan = GraspPlan(
                body=world.body_ids[0],
                centre=(low[:2] + high[:2]) / 2,
                tip_z=max(TRAY_FLOOR_Z + 0.006, high[2] - 0.03),
                yaw=0.0,
                width=float(np.max(high[:2] - low[:2])),
            )
        self._aim(plan)

    def _aim(self, plan: GraspPlan) -> None:
        workspace = self.world.config.workspace
        self.plan = plan
        self.grip_yaw = wrap_yaw(plan.yaw)
        self.grasp = workspace.clamp(self._flange_for(plan))
        self.above = np.array([*self.grasp[:2], workspace.high[2] - 0.05])

    def _flange_for(self, plan: GraspPlan) -> np.ndarray:
        # The fingers close beside the flange's axis, not under it: aim the flange so they meet
        # on the object.
        offset = self.world.fingertip_offset(wrap_yaw(plan.yaw))
        return np.array([*(plan.centre - offset[:2]), plan.tip_z - offset[2]])

    def _reachable(self, plan: GraspPlan) -> bool:
        flange = self._flange_for(plan)
        world = self.world
        inside = np.allclose(world.config.workspace.clamp(flange), flange)
        return inside and np.allclose(world.geometry.reachable(flange), flange)

    def act(self, observation: Observation, step: int, steps_left: int) -> Action:
        """The next step towards the planned grasp, re-aimed from the pose; CLOSE once there."""
        pose = observation.pose
        dyaw = (self.grip_yaw - pose.yaw + math.pi / 2) % math.pi - math.pi / 2
        xy_error = np.linalg.norm(pose.position[:2] - self.grasp[:2])
        at_depth = pose.position[2] - self.grasp[2] < 0.005
        if steps_left <= 1 or (at_depth and xy_error < 0.012 and abs(dyaw) < 0.05):
            return Action(CLOSE, motion_to(pose.position, pose.position))
        # Descend while re-aiming from where the arm really is (commands carry noise);
        # stay high until roughly above the object so the fingers do not sweep it away.
        step_m = self.world.config.workspace.max_step_cm / 100.0
        z = self.grasp[2] if xy_error < 0.03 else max(self.grasp[2], pose.position[2] - step_m / 2)
        target = np.array([*self.grasp[:2], max(z, pose.position[2] - step_m)])
        return Action(MOVE, motion_to(pose.position, target, dyaw))


class NoisyOraclePolicy(OraclePolicy):
    """The oracle aiming at a perturbed grasp: scripted exploration around good grasps.

    Random exploration rarely ends near an object (and then mostly fails on the
    fine alignment), so its data says little about what separates a grasp that
    holds from one that slips. This policy plans the oracle's grasp, then moves
    the fingertips' meeting point by Gaussian noise in the horizontal plane and
    turns the closing direction by Gaussian noise, so its episodes cover near
    misses and near hits around grasps that work. The noise is drawn from the
    episode's policy seed.

    Args:
        world: The simulated world (privileged geometry, as for the oracle).
        position_sigma_m: Standard deviation of the grasp point's shift along x and y, metres.
        yaw_sigma_rad: Standard deviation of the closing direction's turn, radians.

    Raises:
        ValueError: a negative standard deviation.
    """

    name = "noisy-oracle"

    def __init__(
        self, world: GraspWorld, position_sigma_m: float = 0.02, yaw_sigma_rad: float = 0.3
    ) -> None:
        if position_sigma_m < 0 or yaw_sigma_rad < 0:
            raise ValueError(
                f"position_sigma_m={position_sigma_m} and yaw_sigma_rad={yaw_sigma_rad} "
                "must not be negative"
            )
        super().__init__(world)
        self.position_sigma_m = position_sigma_m
        self.yaw_sigma_rad = yaw_sigma_rad

    def begin(self, x0: Observation, seed: int, steps: int) -> None:
        """Plans the oracle's grasp, then shifts and turns it by this episode's noise."""
        super().begin(x0, seed, steps)
        rng = np.random.default_rng(seed)
        shift = rng.normal(0.0, self.position_sigma_m, 2)
        turn = rng.normal(0.0, self.yaw_sigma_rad)
        self._aim(
            dataclasses.replace(
                self.plan, centre=self.plan.centre + shift, yaw=wrap_yaw(self.plan.yaw + turn)
            )
        )
