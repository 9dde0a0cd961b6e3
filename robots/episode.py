"""Runs one grasp attempt with any policy: x0, then observe → act → execute until the gripper closes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robots.policies import CLOSE, RAISE, Action
from robots.world import GraspWorld, Observation, Pose


@dataclass(frozen=True)
class StepRecord:
    observation: Observation  # before the action
    action: Action


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    x0: Observation
    steps: tuple[StepRecord, ...]
    success: bool
    final_pose: Pose  # where the gripper closed
    object_ids: tuple[str, ...]


def run_episode(world: GraspWorld, policy, seed: int, max_steps: int) -> EpisodeResult:
    """One episode of at most `max_steps` steps; the last step always closes the gripper."""
    start = world.reset(seed)
    policy.begin(np.random.default_rng(seed + 1), max_steps)
    steps: list[StepRecord] = []
    for step in range(max_steps):
        observation = world.observe()
        action = policy.act(observation, step, max_steps - step)
        if step == max_steps - 1 and action.kind != CLOSE:
            action = Action(CLOSE, np.array([0.0, 0.0, 0.0, 0.0, 1.0]))
        steps.append(StepRecord(observation, action))
        if action.kind == CLOSE:
            break
        world.move(action.motion, raised=action.kind == RAISE)
    final_pose = world.pose()
    success = world.close_and_lift()
    return EpisodeResult(
        seed=seed,
        x0=start.x0,
        steps=tuple(steps),
        success=success,
        final_pose=final_pose,
        object_ids=start.object_ids,
    )
