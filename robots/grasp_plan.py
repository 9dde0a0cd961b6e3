"""Where the privileged oracle grasps: pinch grasps scored on a top-down height map of the tray.

The height map comes from rays cast straight down through the simulated tray
(scan_tray): exact geometry no camera could give, which is why only the oracle
uses it.

For every object and gripper yaw, the slice of the object between the fingers
must fit the open gripper, and the two finger footprints beside it must be
free down to the fingertips' depth (no neighbour, no tray wall, no other part
of the same object under them). Of the grasps that pass, the one with a slice
nearest a comfortable width and low in the tray wins: wide slices leave little
room for the noise on the horizontal motion, slivers and flat bits slip out of
the fingers, and objects lying on others roll away.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robots.world import TRAY_CENTRE, TRAY_FLOOR_Z, GraspWorld

# The kuka_with_gripper2 fingers, open (world.OPEN_ANGLE), seen from above in the
# gripper's frame: u along the closing direction, v across it.
FINGER_INNER_M = 0.050  # inner faces of the open fingertips, each side of the centre
FINGER_OUTER_M = 0.088
FINGER_HALF_WIDTH_M = 0.0125
MAX_SLICE_M = 0.085  # a slice wider than this does not leave the fingers room to close on it
MIN_SLICE_M = 0.015  # slivers slip out
MIN_HEIGHT_M = 0.015  # the fingertips cannot get under flatter things
COMFORTABLE_SLICE_M = 0.035
HEIGHT_COST = 1.0  # metres of slice-width mismatch worth one metre of height above the floor
GRASP_DEPTH_M = 0.03  # fingertips this far below the slice's top...
FLOOR_CLEARANCE_M = 0.006  # ...but never closer to the floor than this
YAWS = np.arange(12) * math.pi / 12
SHIFTS_M = (-0.02, 0.0, 0.02)  # slices across the object, from its centre


@dataclass(frozen=True)
class TopDownScan:
    """Heights seen from straight above: height[i, j] at (xs[i], ys[j]), and which body is there."""

    xs: np.ndarray  # [W] metres, base frame
    ys: np.ndarray  # [H]
    height: np.ndarray  # [W, H] metres: the top surface
    body: np.ndarray  # [W, H] PyBullet body id of that surface, -1 for none


def scan_tray(world: GraspWorld, resolution_m: float = 0.005) -> TopDownScan:
    """A top-down height map of the tray and everything in it, by casting rays.

    Rays start 24 cm above the tray's floor, below the gripper at the start of an
    episode; later in an episode the arm may shade what is under it.
    """
    centre = np.add(TRAY_CENTRE, world.look.tray_offset)
    half = 0.28
    xs = np.arange(centre[0] - half, centre[0] + half, resolution_m)
    ys = np.arange(centre[1] - half, centre[1] + half, resolution_m)
    grid_x, grid_y = np.meshgrid(xs, ys, indexing="ij")
    starts = np.stack(
        [grid_x.ravel(), grid_y.ravel(), np.full(grid_x.size, TRAY_FLOOR_Z + 0.24)], axis=1
    )
    ends = starts.copy()
    ends[:, 2] = TRAY_FLOOR_Z - 0.05
    hits = world.sim.rayTestBatch(starts.tolist(), ends.tolist())
    body = np.array([h[0] for h in hits]).reshape(grid_x.shape)
    height = np.array([h[3][2] for h in hits]).reshape(grid_x.shape)
    height[body < 0] = TRAY_FLOOR_Z - 0.05
    return TopDownScan(xs=xs, ys=ys, height=height, body=body)


@dataclass(frozen=True)
class GraspPlan:
    """A pinch grasp: the fingertips' midpoint, depth and the closing direction."""

    body: int
    centre: np.ndarray  # [2] metres, base frame: where the fingertips meet
    tip_z: float  # metres: height of the fingertips when they close
    yaw: float  # closing direction, radians
    width: float  # metres: the object's slice between the fingers
    cost: float = 0.0  # lower is better


def plan_grasp(
    scan: TopDownScan,
    bodies: list[int],
    floor_z: float,
    reachable: Callable[[GraspPlan], bool] = lambda plan: True,
) -> GraspPlan | None:
    """The best pinch grasp on any of `bodies`, or None when no object can be pinched.

    Args:
        scan: Height map of the tray (GraspWorld.scan).
        bodies: The objects' body ids.
        floor_z: Height of the tray's floor.
        reachable: Whether the arm can put its fingers where a plan says.
    """
    grid_x, grid_y = np.meshgrid(scan.xs, scan.ys, indexing="ij")
    cells = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    heights, owners = scan.height.ravel(), scan.body.ravel()
    cell = float(scan.xs[1] - scan.xs[0])
    best: GraspPlan | None = None
    for body in bodies:
        mine = owners == body
        if mine.sum() < 4:
            continue
        points, tops = cells[mine], heights[mine]
        centroid = points.mean(axis=0)
        for yaw in YAWS:
            closing = np.array([math.cos(yaw), math.sin(yaw)])
            across = np.array([-closing[1], closing[0]])
            for shift in SHIFTS_M:
                plan = _slice_grasp(
                    body, yaw, centroid + shift * across, closing, across, points, tops, cell
                )
                if plan is None or plan.tip_z - floor_z < MIN_HEIGHT_M:
                    continue
                plan = _with_depth(plan, cells, heights, closing, across, floor_z)
                if plan is None or (best is not None and plan.cost >= best.cost):
                    continue
                if reachable(plan):
                    best = plan
    return best


def _slice_grasp(body, yaw, centre, closing, across, points, tops, cell) -> GraspPlan | None:
    """The object's slice between the fingers at this centre and yaw, if it fits."""
    offsets = points - centre
    inside = np.abs(offsets @ across) <= FINGER_HALF_WIDTH_M
    if inside.sum() < 2:
        return None
    along = offsets[inside] @ closing
    width = float(along.max() - along.min()) + cell
    if not MIN_SLICE_M <= width <= MAX_SLICE_M:
        return None
    middle = centre + closing * float(along.max() + along.min()) / 2
    return GraspPlan(
        body=body, centre=middle, tip_z=float(tops[inside].max()), yaw=float(yaw), width=width
    )


def _with_depth(plan, cells, heights, closing, across, floor_z) -> GraspPlan | None:
    """Sets the fingertips' depth; None when something stands under either finger."""
    tip_z = max(floor_z + FLOOR_CLEARANCE_M, plan.tip_z - GRASP_DEPTH_M)
    offsets = cells - plan.centre
    along, side = np.abs(offsets @ closing), np.abs(offsets @ across)
    under_fingers = (along >= FINGER_INNER_M) & (along <= FINGER_OUTER_M)
    under_fingers &= side <= FINGER_HALF_WIDTH_M + 0.003
    if heights[under_fingers].max(initial=floor_z) > tip_z + 0.003:
        return None
    cost = abs(plan.width - COMFORTABLE_SLICE_M) + HEIGHT_COST * (tip_z - floor_z)
    return GraspPlan(
        body=plan.body, centre=plan.centre, tip_z=tip_z, yaw=plan.yaw, width=plan.width, cost=cost
    )
