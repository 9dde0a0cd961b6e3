"""What a collection's shards report, whichever backend runs them: one frozen dataclass per event.

Local workers send these through a multiprocessing queue (they pickle across
`spawn`); the Kubernetes backend makes them from Job status and the store's
counts. The farm's bookkeeping (GetCollection, metrics) consumes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShardStarted:
    """A shard began to run.

    Attributes:
        worker: Where it runs, for people: "pid 1234", or the pod's name.
    """

    collection_id: str
    shard: int
    worker: str


@dataclass(frozen=True)
class EpisodeStored:
    """A local worker finished one episode: it is in the store, or spooled on its way there.

    Attributes:
        episode_id: The episode (worker.episode_id of collection, shard and index).
        success: Whether the grasp succeeded.
        resumed: The store held it from an earlier run of the collection; not run again.
        physics_steps: Physics steps simulated for it (0 when resumed).
        renders: Camera images rendered for it (0 when resumed).
    """

    collection_id: str
    shard: int
    episode_id: str
    success: bool
    resumed: bool = False
    physics_steps: int = 0
    renders: int = 0


@dataclass(frozen=True)
class ShardCounted:
    """The store's count of a shard's episodes, for shards whose pods write to it directly.

    Attributes:
        episodes: Episodes of the shard the store holds.
        successes: Of those, the successful grasps.
    """

    collection_id: str
    shard: int
    episodes: int
    successes: int


@dataclass(frozen=True)
class ShardFinished:
    """A shard ran every episode, and every one reached the store."""

    collection_id: str
    shard: int


@dataclass(frozen=True)
class ShardStopped:
    """A shard ended early because its collection was stopped (or never started for it)."""

    collection_id: str
    shard: int


@dataclass(frozen=True)
class ShardFailed:
    """A shard ended on an error.

    Attributes:
        error: What went wrong and, where known, what to do about it.
    """

    collection_id: str
    shard: int
    error: str


Event = ShardStarted | EpisodeStored | ShardCounted | ShardFinished | ShardStopped | ShardFailed
# The events after which a shard runs no more.
ENDINGS = (ShardFinished, ShardStopped, ShardFailed)
