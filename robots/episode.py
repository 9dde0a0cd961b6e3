"""The one episode loop: x0, then observe → act → execute until the gripper closes, then lift.

A command source ("policy") has `begin(x0, seed, max_steps)` and
`act(observation, step, steps_left) -> Action`: the random and oracle policies
here, or the servo-planner behind the robot agent. A source that cannot answer
raises `Abort`: the arm holds still where it is and the episode ends without a
grasp. The arm is anything with reset / observe / move / pose / grasp: a
GraspWorld or a robot driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robots.policies import CLOSE, RAISE, Action
from robots.world import Observation, Pose

CLOSE_NOW = np.array([0.0, 0.0, 0.0, 0.0, 1.0])


class Abort(RuntimeError):
    """The command source cannot say what to do: stop the arm, end the episode."""


@dataclass(frozen=True)
class StepRecord:
    """One step of an episode: what the arm saw, what it was told, and how long that took."""

    observation: Observation  # before the action
    action: Action
    seconds: float  # observe + choose + execute
    time_ns: int = 0  # wall clock when the step began (0: not recorded)


@dataclass(frozen=True)
class EpisodeResult:
    """One finished episode: x0, its steps, where the gripper closed and whether it held."""

    seed: int
    x0: Observation
    steps: tuple[StepRecord, ...]
    success: bool | None  # None: aborted before the grasp
    final_pose: Pose  # where the gripper closed (or stopped)
    object_ids: tuple[str, ...]
    abort_reason: str = ""
    started_ns: int = 0  # wall clock when the episode began (0: not recorded)


def run_episode(
    arm,
    policy,
    seed: int,
    max_steps: int,
    on_step: Callable[[StepRecord], None] | None = None,
    *,
    policy_seed: int | None = None,
) -> EpisodeResult:
    """One grasp attempt of at most `max_steps` steps; the last step always closes the gripper.

    Args:
        arm: What is driven (a GraspWorld or a robot driver).
        policy: The command source.
        seed: Seeds the scene (objects, placement, randomization) through `arm.reset`.
        max_steps: Steps at most; the last one closes the gripper whatever the policy says.
        on_step: Called with each step's record as soon as it is executed.
        policy_seed: Seeds the policy; None uses `seed`. Another policy seed with the same
            scene seed is another attempt at the very same scene.

    Returns:
        The episode; `seed` in it is the scene's.
    """
    started_ns = time.time_ns()
    start = arm.reset(seed)
    policy.begin(start.x0, seed if policy_seed is None else policy_seed, max_steps)
    steps: list[StepRecord] = []
    for step in range(max_steps):
        began, began_ns = time.perf_counter(), time.time_ns()
        observation = arm.observe()
        try:
            action = policy.act(observation, step, max_steps - step)
        except Abort as err:
            return EpisodeResult(
                seed,
                start.x0,
                tuple(steps),
                None,
                arm.pose(),
                start.object_ids,
                str(err),
                started_ns,
            )
        if step == max_steps - 1 and action.kind != CLOSE:
            action = Action(CLOSE, CLOSE_NOW, action.predicted_success, action.model)
        if action.kind != CLOSE:
            arm.move(action.motion, raised=action.kind == RAISE)
        record = StepRecord(observation, action, time.perf_counter() - began, began_ns)
        steps.append(record)
        if on_step is not None:
            on_step(record)
        if action.kind == CLOSE:
            break
    final_pose = arm.pose()
    success = arm.grasp()
    return EpisodeResult(
        seed, start.x0, tuple(steps), success, final_pose, start.object_ids, "", started_ns
    )
