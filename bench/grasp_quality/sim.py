"""Simulated episodes, in this process or in spawned worker processes."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterable

from tqdm import tqdm

CHUNK = 8  # episodes per worker task: progress stays smooth, task overhead small

_WORLDS: dict = {}  # one world per object set and worker process, built on first use


def shared_world(object_set: str, objects_per_bin: int = 5):
    from robots.config import WorldConfig
    from robots.world import GraspWorld

    key = (object_set, objects_per_bin)
    if key not in _WORLDS:
        _WORLDS[key] = GraspWorld(
            WorldConfig(object_set=object_set, objects_per_bin=objects_per_bin)
        )
    return _WORLDS[key]


def run_tasks(task: Callable, jobs: list, workers: int, desc: str) -> Iterable:
    """Results of `task(job)` for every job, in this process (workers=1) or a spawned pool."""
    with tqdm(total=len(jobs), desc=desc, unit="task", file=sys.stderr) as bar:
        if workers <= 1 or len(jobs) <= 1:
            try:
                for job in jobs:
                    yield task(job)
                    bar.update(1)
            finally:
                while _WORLDS:
                    _WORLDS.popitem()[1].close()
            return
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(task, jobs):
                yield result
                bar.update(1)


def safe_policy(policy, world):
    # The sim-farm's rules for every command (step length, unit rotation), so these
    # episodes are the ones the farm would collect.
    from robots.safety import SafePolicy

    return SafePolicy(policy, world.config.workspace.max_step_cm)
