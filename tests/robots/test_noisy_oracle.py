"""The noisy oracle's perturbed grasps and several attempts at one scene (policy seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from robots.config import WorldConfig
from robots.episode import run_episode
from robots.kinematics import wrap_yaw
from robots.policies import NoisyOraclePolicy, OraclePolicy, RandomPolicy
from robots.world import GraspWorld

SCENE = 21


@pytest.fixture(scope="module")
def world():
    with GraspWorld(WorldConfig(seed=1)) as w:
        yield w


def _aim(policy, world: GraspWorld, seed: int) -> tuple[np.ndarray, float, np.ndarray]:
    start = world.reset(SCENE)
    policy.begin(start.x0, seed, 8)
    return policy.plan.centre.copy(), policy.plan.yaw, policy.grasp.copy()


def test_without_noise_it_aims_exactly_where_the_oracle_does(world):
    centre, yaw, flange = _aim(OraclePolicy(world), world, 0)
    noisy = _aim(NoisyOraclePolicy(world, position_sigma_m=0.0, yaw_sigma_rad=0.0), world, 5)
    np.testing.assert_allclose(noisy[0], centre)
    assert noisy[1] == pytest.approx(wrap_yaw(yaw))
    np.testing.assert_allclose(noisy[2], flange)


def test_the_grasp_moves_and_turns_by_the_noise_asked_for_and_replays_from_its_seed(world):
    centre, yaw, _ = _aim(OraclePolicy(world), world, 0)
    policy = NoisyOraclePolicy(world, position_sigma_m=0.03, yaw_sigma_rad=0.4)
    shifts, turns = [], []
    for seed in range(24):
        noisy_centre, noisy_yaw, flange = _aim(policy, world, seed)
        shifts.append(noisy_centre - centre)
        turns.append(wrap_yaw(noisy_yaw - yaw))
        # The flange is aimed so that the fingertips meet on the perturbed point.
        offset = world.fingertip_offset(noisy_yaw)[:2]
        clamped = world.config.workspace.clamp(np.array([*(noisy_centre - offset), flange[2]]))
        np.testing.assert_allclose(flange[:2], clamped[:2], atol=1e-9)
    # 24 draws: the sample std lies within a factor of about 1.5 of sigma.
    assert 0.02 < np.std(np.array(shifts)) < 0.045
    assert 0.25 < np.std(turns) < 0.6
    again = _aim(policy, world, 3)
    np.testing.assert_allclose(again[0], centre + shifts[3])


def test_negative_noise_is_refused(world):
    with pytest.raises(ValueError, match="must not be negative"):
        NoisyOraclePolicy(world, position_sigma_m=-0.01)


def test_attempts_at_one_scene_share_the_scene_but_not_the_policy(world):
    first = run_episode(world, RandomPolicy(world), SCENE, 3, policy_seed=5)
    second = run_episode(world, RandomPolicy(world), SCENE, 3, policy_seed=6)
    assert first.seed == second.seed == SCENE and first.object_ids == second.object_ids
    np.testing.assert_array_equal(first.x0.rgb, second.x0.rgb)
    assert not np.allclose(first.steps[0].action.motion, second.steps[0].action.motion)
    # Without a policy seed the scene's seed seeds the policy, as always.
    default = run_episode(world, RandomPolicy(world), SCENE, 3)
    same = run_episode(world, RandomPolicy(world), SCENE, 3, policy_seed=SCENE)
    for a, b in zip(default.steps, same.steps, strict=True):
        np.testing.assert_array_equal(a.action.motion, b.action.motion)
        np.testing.assert_array_equal(a.observation.rgb, b.observation.rgb)
