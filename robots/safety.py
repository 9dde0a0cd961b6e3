"""Arm safety on the arm's side: whatever a command source says, nothing unsafe reaches the arm."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from robots.episode import EpisodeResult, StepRecord, run_episode
from robots.policies import Action
from robots.world import Observation


def safe_motion(motion: np.ndarray, max_step_cm: float) -> np.ndarray:
    """Arm safety on the agent's side: finite numbers, at most one step's length, a unit rotation."""
    motion = np.nan_to_num(np.asarray(motion, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    length = np.linalg.norm(motion[:3])
    if length > max_step_cm:
        motion[:3] *= max_step_cm / length
    norm = math.hypot(motion[3], motion[4])
    motion[3:] = (0.0, 1.0) if norm < 1e-6 else motion[3:] / norm
    return motion


class SafePolicy:
    """Wraps any command source so nothing unsafe reaches the arm, whatever the source says."""

    def __init__(self, policy, max_step_cm: float) -> None:
        self.policy = policy
        self.max_step_cm = max_step_cm
        self.name = policy.name

    def begin(self, x0: Observation, seed: int, max_steps: int) -> None:
        """Starts the wrapped source's episode."""
        self.policy.begin(x0, seed, max_steps)

    def act(self, observation: Observation, step: int, steps_left: int) -> Action:
        """The wrapped source's action, its motion made safe (step limit, unit yaw vector)."""
        action = self.policy.act(observation, step, steps_left)
        return dataclasses.replace(action, motion=safe_motion(action.motion, self.max_step_cm))


def run_safe_episode(
    driver,
    policy,
    seed: int,
    max_steps: int,
    on_step: Callable[[StepRecord], None] | None = None,
) -> EpisodeResult:
    """One episode on a robot driver with every command through the safety rules."""
    safe = SafePolicy(policy, driver.arm.world.workspace.max_step_cm)
    return run_episode(driver, safe, seed, max_steps, on_step=on_step)
