"""The cross-entropy method over motion commands, and the servoing decision.

Candidates are grasp *targets* sampled inside the workspace (position and a
rotation about the vertical axis); each becomes the paper's 5-D motion
v = (target - current position in cm, sin, cos of the rotation). The first
iteration samples uniformly, later ones from a Gaussian fitted to the elites,
so every candidate keeps the gripper inside the workspace.

v is the motion to where the gripper will *close*, so targets are drawn from
the grasp band, the lowest `grasp_band_m` of the workspace: that is where the
training episodes closed, and a target higher up would ask the model about
grasps it has never seen (a weak model often scores those highest). The arm
still descends in steps: each command moves at most the arm's step limit
toward the target, and the next step plans again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robots.config import GRASP_BAND_M

NO_MOTION = np.array([0.0, 0.0, 0.0, 0.0, 1.0], dtype=np.float32)
# (motions [K, 5], timeout_s) -> P(success) [K]; raises TimeoutError when the time runs out.
Scorer = Callable[[np.ndarray, float], np.ndarray]


@dataclass(frozen=True)
class CemParams:
    """The cross-entropy method's settings: population, elites, iterations and the search box."""

    population: int = 64
    elites: int = 6
    iterations: int = 3
    max_yaw_rad: float = np.pi / 2
    grasp_band_m: float = (
        GRASP_BAND_M  # targets lie this close to the workspace floor; inf: anywhere
    )


@dataclass(frozen=True)
class Workspace:
    """Box the gripper must stay in, metres, robot base frame."""

    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class CemResult:
    """The best motion CEM found, with its score and that of not moving."""

    motion: np.ndarray  # [5], the best motion found
    success: float  # C(best motion)
    no_motion_success: float  # C(no motion): the close heuristic's reference
    iterations: int
    deadline_reached: bool


def motions_to(targets: np.ndarray, position: np.ndarray) -> np.ndarray:
    """[N, 4] targets (x, y, z metres, yaw change) → [N, 5] motions (cm, sin, cos)."""
    delta_cm = (targets[:, :3] - position) * 100.0
    yaw = targets[:, 3:4]
    return np.concatenate([delta_cm, np.sin(yaw), np.cos(yaw)], axis=1).astype(np.float32)


def grasp_box(workspace: Workspace, params: CemParams) -> tuple[np.ndarray, np.ndarray]:
    """Bounds [4] of the targets CEM samples: the grasp band of the workspace, and the yaw range."""
    top = min(workspace.high[2], workspace.low[2] + params.grasp_band_m)
    low = np.append(workspace.low, -params.max_yaw_rad)
    high = np.append([*workspace.high[:2], top], params.max_yaw_rad)
    return low, high


def random_target(rng: np.random.Generator, workspace: Workspace, params: CemParams) -> np.ndarray:
    """One uniformly random grasp target in the grasp band, for exploration."""
    low, high = grasp_box(workspace, params)
    return rng.uniform(low, high)


def optimize(
    score: Scorer,
    position: np.ndarray,
    workspace: Workspace,
    params: CemParams,
    rng: np.random.Generator,
    time_left: Callable[[], float],
    first_time_left: Callable[[], float] | None = None,
) -> CemResult:
    """Runs CEM until its iterations are done or time is up; one `score` call per iteration.

    Args:
        score: Scores candidate motions with the grasp model (`Scorer`).
        position: The gripper's current position, metres.
        workspace: The box the targets must lie in.
        params: Population, elites, iterations and the search box's limits.
        rng: Draws the candidates.
        time_left: Seconds left of the planning budget; no iteration starts past it.
        first_time_left: Seconds the first iteration may take (the caller's own
            deadline), when a plan that arrives late beats no plan; `time_left` if None.

    Raises:
        TimeoutError: not even the first iteration fitted in the time it was given.
    """
    low, high = grasp_box(workspace, params)
    best_motion, best_success, no_motion_success = NO_MOTION, -1.0, None
    mean = std = None
    done = 0
    for iteration in range(params.iterations):
        remaining = (first_time_left or time_left)() if iteration == 0 else time_left()
        if remaining <= 0:
            break
        if iteration == 0:
            targets = rng.uniform(low, high, (params.population, 4))
        else:
            targets = np.clip(rng.normal(mean, std, (params.population, 4)), low, high)
        motions = motions_to(targets, position)
        if iteration == 0:
            # The no-motion candidate rides along with the first batch: no extra call.
            motions = np.vstack([motions, NO_MOTION])
        try:
            scores = np.asarray(score(motions, remaining), dtype=np.float64)
        except TimeoutError:
            if done == 0:
                raise
            break  # out of time mid-iteration: keep what the earlier ones found
        if iteration == 0:
            no_motion_success = float(scores[-1])
            scores = scores[:-1]
            motions = motions[:-1]
        order = np.argsort(scores)[::-1]
        if scores[order[0]] > best_success:
            best_success, best_motion = float(scores[order[0]]), motions[order[0]]
        elite = targets[order[: params.elites]]
        mean, std = elite.mean(axis=0), elite.std(axis=0) + 1e-6
        done += 1
    if no_motion_success is None:
        raise TimeoutError("the planning deadline passed before the first CEM iteration")
    return CemResult(
        motion=best_motion,
        success=best_success,
        no_motion_success=no_motion_success,
        iterations=done,
        deadline_reached=done < params.iterations,
    )
