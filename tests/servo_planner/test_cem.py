"""CEM on functions whose best motion is known."""

from __future__ import annotations

import numpy as np
import pytest

from services.servo_planner import cem

WORKSPACE = cem.Workspace(low=np.array([0.3, -0.2, 0.0]), high=np.array([0.7, 0.2, 0.3]))
POSITION = np.array([0.5, 0.0, 0.2])
GOAL_CM = np.array([12.0, -8.0, -18.0])  # the best motion: into the grasp band from POSITION


def peaked(motions: np.ndarray, timeout_s: float) -> np.ndarray:
    """P(success) falls off with distance from GOAL_CM; rotation of 0.6 rad is best."""
    distance = np.linalg.norm(motions[:, :3] - GOAL_CM, axis=1)
    angle = np.arctan2(motions[:, 3], motions[:, 4])
    return np.exp(-((distance / 10.0) ** 2) - (angle - 0.6) ** 2)


def test_finds_the_peak_and_stays_in_the_workspace():
    calls = []

    def score(motions, timeout_s):
        calls.append(motions.copy())
        return peaked(motions, timeout_s)

    result = cem.optimize(
        score,
        POSITION,
        WORKSPACE,
        cem.CemParams(iterations=5),
        np.random.default_rng(0),
        lambda: 10.0,
    )
    assert len(calls) == 5 and result.iterations == 5 and not result.deadline_reached
    assert np.linalg.norm(result.motion[:3] - GOAL_CM) < 4.0
    assert abs(np.arctan2(result.motion[3], result.motion[4]) - 0.6) < 0.3
    assert result.success > 0.8
    # Every candidate's target is inside the workspace's grasp band; the first call also scored
    # "no motion".
    band_top = WORKSPACE.low[2] + cem.CemParams().grasp_band_m
    for motions in calls:
        targets = POSITION + motions[: -1 if motions is calls[0] else None, :3] / 100.0
        assert (targets >= WORKSPACE.low - 1e-6).all() and (targets <= WORKSPACE.high + 1e-6).all()
        assert (targets[:, 2] <= band_top + 1e-6).all()
        np.testing.assert_allclose(motions[:, 3] ** 2 + motions[:, 4] ** 2, 1.0, rtol=1e-5)
    assert len(calls[0]) == 65 and (calls[0][-1] == cem.NO_MOTION).all()
    assert result.no_motion_success == pytest.approx(float(peaked(cem.NO_MOTION[None], 0)[0]))


def test_deadline_returns_the_best_so_far():
    budget = iter([1.0, 0.0])
    result = cem.optimize(
        peaked, POSITION, WORKSPACE, cem.CemParams(), np.random.default_rng(1), lambda: next(budget)
    )
    assert result.iterations == 1 and result.deadline_reached


def test_the_first_iteration_runs_on_its_own_time():
    result = cem.optimize(
        peaked,
        POSITION,
        WORKSPACE,
        cem.CemParams(),
        np.random.default_rng(1),
        time_left=lambda: 0.0,
        first_time_left=lambda: 1.0,
    )
    assert result.iterations == 1 and result.deadline_reached


def test_no_time_at_all_is_an_error():
    with pytest.raises(TimeoutError):
        cem.optimize(
            peaked, POSITION, WORKSPACE, cem.CemParams(), np.random.default_rng(1), lambda: 0.0
        )


def test_random_targets_stay_in_the_grasp_band():
    params = cem.CemParams(grasp_band_m=0.05)
    rng = np.random.default_rng(3)
    targets = np.array([cem.random_target(rng, WORKSPACE, params) for _ in range(200)])
    assert (targets[:, :3] >= WORKSPACE.low).all() and (targets[:, 2] <= 0.05).all()
    assert (targets[:, :2] <= WORKSPACE.high[:2]).all() and (
        np.abs(targets[:, 3]) <= np.pi / 2
    ).all()
