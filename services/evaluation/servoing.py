"""How a contender's episodes ended: what the servoing decided, so that a failure can be read.

Per episode, from its stored steps: whether the planner chose to close or the
arm's step limit forced the close (in a model-driven episode, a close that carries
no model: the policy closes at its last step whatever the planner would say;
random exploration has no planner to overrule), how many RAISE
commands it took, how many steps it used, and how high the gripper was above
the workspace floor when it closed. A summary splits them by outcome:
failures that closed high up read differently from failures at the floor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from graspfleet.v1 import common_pb2
from models.episodes.shards import EpisodeRecord

Kind = common_pb2.Command


@dataclass(frozen=True)
class EpisodeServoing:
    """What the servoing did in one episode."""

    success: bool
    steps: int
    raises: int
    forced_close: bool  # the step limit closed, not the planner
    close_height_cm: float  # flange height above the workspace floor when it closed


def episode_servoing(record: EpisodeRecord, floor_z_m: float) -> EpisodeServoing:
    """The servoing of one stored episode; `floor_z_m` is the workspace's lowest flange height.

    Raises:
        ValueError: the episode has no steps (nothing was decided).
    """
    if not record.steps:
        raise ValueError(f"episode {record.header.episode_id} has no steps")
    last = record.steps[-1]
    return EpisodeServoing(
        success=record.outcome.result == common_pb2.GRASP_RESULT_SUCCESS,
        steps=len(record.steps),
        raises=sum(s.command.kind == Kind.KIND_RAISE for s in record.steps),
        forced_close=(
            last.command.kind == Kind.KIND_CLOSE
            and not last.model.name
            and any(s.model.name for s in record.steps)
        ),
        close_height_cm=(last.pose.position_m.z - floor_z_m) * 100.0,
    )


def summarize(episodes: Iterable[EpisodeServoing]) -> dict:
    """Shares and means over the episodes, overall and for successes and failures apart."""

    def part(group: list[EpisodeServoing]) -> dict:
        if not group:
            return {"episodes": 0}
        heights = np.array([e.close_height_cm for e in group])
        return {
            "episodes": len(group),
            "forced_close": float(np.mean([e.forced_close for e in group])),
            "raises_per_episode": float(np.mean([e.raises for e in group])),
            "steps_per_episode": float(np.mean([e.steps for e in group])),
            "close_height_cm": {
                "median": float(np.median(heights)),
                "p90": float(np.percentile(heights, 90)),
            },
        }

    everything = list(episodes)
    return {
        "all": part(everything),
        "successes": part([e for e in everything if e.success]),
        "failures": part([e for e in everything if not e.success]),
    }


def as_dict(episode: EpisodeServoing) -> dict:
    """The episode's servoing as a plain dict, for JSON reports."""
    return asdict(episode)
