"""The arm goes exactly where the world says it is, and the fingers close along the reported yaw."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robots.config import Workspace, WorldConfig
from robots.kinematics import wrap_yaw
from robots.world import FINGER_TIPS, FLANGE, GraspWorld


@pytest.fixture(scope="module")
def world():
    with GraspWorld(WorldConfig(seed=1, motion_noise_cm=0.0)) as w:
        w.reset(seed=1)
        yield w


def _link(world: GraspWorld, link: int) -> np.ndarray:
    return np.asarray(world.sim.getLinkState(world.arm, link, computeForwardKinematics=1)[4])


def test_the_reported_pose_is_the_flange_and_the_yaw_is_the_closing_direction(world):
    rng = np.random.default_rng(0)
    for _ in range(12):
        dyaw = rng.uniform(-1.2, 1.2)
        world.move(np.array([*rng.uniform(-6, 6, 3), math.sin(dyaw), math.cos(dyaw)]))
        pose = world.pose()
        np.testing.assert_allclose(_link(world, FLANGE), pose.position, atol=1e-5)
        left, right = (_link(world, tip) for tip in FINGER_TIPS)
        closing = math.atan2(right[1] - left[1], right[0] - left[0])
        assert abs(wrap_yaw(closing - pose.yaw)) < 1e-3
        # The fingers meet beside the flange, where fingertip_offset says.
        tips = (left + right) / 2
        np.testing.assert_allclose(
            tips[:2], (pose.position + world.fingertip_offset(pose.yaw))[:2], atol=1e-4
        )


def test_the_far_corner_of_the_workspace_is_pulled_into_reach():
    # A workspace wider than the default, whose far top corner the arm cannot reach.
    wide = Workspace(low=(0.45, -0.12, 0.10), high=(0.83, 0.27, 0.40))
    with GraspWorld(WorldConfig(seed=1, motion_noise_cm=0.0, workspace=wide)) as world:
        world.reset(seed=1)
        for _ in range(8):
            world.move(np.array([10.0, 10.0, 10.0, 0.0, 1.0]))
        position = world.pose().position
        assert position[2] == pytest.approx(wide.high[2])
        # The box corner is out of reach.
        assert np.hypot(*position[:2]) < np.hypot(*wide.high[:2]) - 0.03
        np.testing.assert_allclose(_link(world, FLANGE), position, atol=1e-5)
        with pytest.raises(ValueError, match="reach"):
            world.geometry.solve(np.array([1.5, 0.0, 0.1]), 0.0)


def test_geometry_is_the_iiwa(world):
    g = world.geometry
    assert (g.shoulder_z, g.upper_arm, g.forearm) == pytest.approx((0.36, 0.42, 0.40), abs=1e-3)
