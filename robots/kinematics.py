"""Closed-form top-down inverse kinematics of the Kuka IIWA: exact flange poses, no iterations.

A top-down pinch grasp leaves the IIWA one redundant joint; fixing the two
"twist" joints (J2 and J4) at zero puts the arm in the vertical plane through
its base axis, where the shoulder, elbow and wrist form a planar two-link arm
with the flange hanging straight down from the wrist. That plane has an exact
solution (elbow up), which is both faster and more accurate than PyBullet's
iterative IK: the pose the world reports is the pose the arm is in, so the
motion v = final pose - current pose that labels every step is right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Joint limits of the IIWA's shoulder, elbow and wrist pitch joints (J1, J3, J5), radians.
PITCH_LIMIT = 2.0944
# Keep a little short of full stretch, where the elbow solution turns singular.
STRETCH_MARGIN_M = 0.005


@dataclass(frozen=True)
class ArmGeometry:
    """Lengths along the IIWA in its zero pose (base frame, metres), measured from the loaded model.

    Attributes:
        shoulder_z: Height of the shoulder joint (J1) above the base.
        upper_arm: Shoulder (J1) to elbow (J3).
        forearm: Elbow (J3) to wrist (J5).
        wrist_to_flange: Wrist (J5) to the flange (the last link's frame).
    """

    shoulder_z: float
    upper_arm: float
    forearm: float
    wrist_to_flange: float

    @classmethod
    def measure(cls, sim, arm: int, flange: int) -> ArmGeometry:
        """Reads the lengths from the arm's link frames in its zero pose (joints are reset)."""
        for joint in range(flange + 1):
            sim.resetJointState(arm, joint, 0.0)

        def z(link: int) -> float:
            return float(sim.getLinkState(arm, link, computeForwardKinematics=1)[4][2])

        shoulder, elbow, wrist = z(1), z(3), z(5)
        return cls(
            shoulder_z=shoulder,
            upper_arm=elbow - shoulder,
            forearm=wrist - elbow,
            wrist_to_flange=z(flange) - wrist,
        )

    @property
    def reach_m(self) -> float:
        """How far the wrist can stretch from the shoulder, less a safety margin (metres)."""
        return self.upper_arm + self.forearm - STRETCH_MARGIN_M

    def reachable(self, position: np.ndarray) -> np.ndarray:
        """The nearest flange position the arm can reach pointing down (horizontal pull-in only)."""
        position = np.asarray(position, dtype=np.float64).copy()
        height = position[2] + self.wrist_to_flange - self.shoulder_z
        radius = math.sqrt(max(self.reach_m**2 - height**2, 0.0))
        horizontal = math.hypot(position[0], position[1])
        if horizontal > radius:
            position[:2] *= radius / horizontal
        return position

    def solve(self, position: np.ndarray, yaw: float) -> list[float]:
        """Joint angles J0..J6 putting the flange at `position`, pointing down, at `yaw`.

        Args:
            position: Flange position in the base frame; pass it through reachable() first.
            yaw: Rotation about the vertical axis of the fingers' closing direction, radians,
                in [-pi/2, pi/2) (a pinch grasp is symmetric under a half turn).

        Returns:
            Seven joint angles, J2 and J4 zero.

        Raises:
            ValueError: The position is out of reach or needs a joint beyond its limit.
        """
        x, y, z = (float(v) for v in position)
        base = math.atan2(y, x)
        radius = math.hypot(x, y)
        height = z + self.wrist_to_flange - self.shoulder_z
        distance = math.hypot(radius, height)
        a, b = self.upper_arm, self.forearm
        if distance > a + b:
            raise ValueError(f"flange position {position} is out of the arm's reach")
        elbow_inner = math.acos(_clip((a * a + b * b - distance**2) / (2 * a * b)))
        shoulder_offset = math.acos(_clip((a * a + distance**2 - b * b) / (2 * a * distance)))
        shoulder = math.atan2(radius, height) - shoulder_offset
        elbow = elbow_inner - math.pi
        wrist = math.pi - (shoulder - elbow)
        if max(abs(shoulder), abs(elbow), abs(wrist)) > PITCH_LIMIT:
            raise ValueError(f"flange position {position} needs a joint beyond its limit")
        # J6 turns the gripper; J0 turns it too, so J6 takes J0 back out.
        return [base, shoulder, 0.0, elbow, 0.0, wrist, base - yaw]


def _clip(cosine: float) -> float:
    return max(-1.0, min(1.0, cosine))


def wrap_yaw(yaw: float) -> float:
    """A gripper yaw in [-pi/2, pi/2): the fingers look the same after half a turn."""
    return (yaw + math.pi / 2) % math.pi - math.pi / 2
