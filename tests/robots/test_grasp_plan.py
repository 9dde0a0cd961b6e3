"""The oracle's grasp choice on hand-made height maps."""

from __future__ import annotations

import math

import numpy as np

from robots.grasp_plan import TopDownScan, plan_grasp
from robots.kinematics import wrap_yaw

FLOOR = 0.0
CELL = 0.005


def _scan(*boxes: tuple[int, tuple[float, float], tuple[float, float], float, float]):
    """Boxes of (body, centre, (length, width), yaw, height) standing on the floor."""
    xs = np.arange(-0.25, 0.25, CELL)
    grid_x, grid_y = np.meshgrid(xs, xs, indexing="ij")
    height = np.full(grid_x.shape, FLOOR)
    body = np.full(grid_x.shape, 1)  # the tray
    for owner, centre, (length, width), yaw, top in boxes:
        dx, dy = grid_x - centre[0], grid_y - centre[1]
        along = dx * math.cos(yaw) + dy * math.sin(yaw)
        across = -dx * math.sin(yaw) + dy * math.cos(yaw)
        inside = (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)
        height[inside] = top
        body[inside] = owner
    return TopDownScan(xs=xs, ys=xs, height=height, body=body)


def test_a_bar_is_pinched_across_its_narrow_side_at_its_middle():
    yaw = math.radians(30)
    plan = plan_grasp(_scan((7, (0.02, -0.03), (0.12, 0.03), yaw, 0.05)), [7], FLOOR)
    assert plan is not None and plan.body == 7
    assert abs(wrap_yaw(plan.yaw - (yaw + math.pi / 2))) < math.radians(16)
    assert np.linalg.norm(plan.centre - (0.02, -0.03)) < 0.025
    assert 0.025 <= plan.width <= 0.045
    assert FLOOR < plan.tip_z < 0.05


def test_a_neighbour_under_a_finger_moves_the_grasp_elsewhere():
    bar = (7, (0.0, 0.0), (0.12, 0.03), 0.0, 0.05)
    alone = plan_grasp(_scan(bar), [7], FLOOR)
    closing = np.array([math.cos(alone.yaw), math.sin(alone.yaw)])
    # A tall block right where one finger of that grasp would come down.
    spot = alone.centre + 0.07 * closing
    plan = plan_grasp(_scan(bar, (8, tuple(spot), (0.04, 0.04), 0.0, 0.08)), [7], FLOOR)
    assert plan is not None
    closing = np.array([math.cos(plan.yaw), math.sin(plan.yaw)])
    for side in (-1, 1):
        finger = plan.centre + side * 0.069 * closing
        assert np.abs(finger - spot).max() > 0.02 + 0.0125


def test_what_cannot_be_pinched_is_refused():
    too_wide = _scan((7, (0.0, 0.0), (0.12, 0.12), 0.0, 0.05))
    too_flat = _scan((7, (0.0, 0.0), (0.08, 0.03), 0.0, 0.008))
    assert plan_grasp(too_wide, [7], FLOOR) is None
    assert plan_grasp(too_flat, [7], FLOOR) is None
