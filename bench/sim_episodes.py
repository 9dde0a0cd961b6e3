"""Simulation throughput and the reference success rates of the simulated world.

Episodes/s in one process (per core) at the default profile (64x64, 8 steps,
random policy) and at the paper profile (640x512 renders), the scaling from 1
to 2 worker processes, and the grasp success of random exploration and of the
privileged oracle in the no-randomization world.

    python -m bench.sim_episodes [--episodes 60] [--success-episodes 100]
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import sys
import time

from robots.config import CameraConfig, WorldConfig
from robots.episode import run_episode
from robots.policies import OraclePolicy, RandomPolicy
from robots.world import GraspWorld


def _episodes(args: tuple[int, int, int, int, str]) -> tuple[int, int, float]:
    episodes, width, height, seed, policy = args
    with GraspWorld(
        WorldConfig(seed=seed, camera=CameraConfig(width=width, height=height))
    ) as world:
        chooser = (OraclePolicy if policy == "oracle" else RandomPolicy)(world)
        run_episode(world, chooser, seed=seed * 10_000, max_steps=8)  # warm-up: textures, meshes
        start = time.perf_counter()
        successes = sum(
            run_episode(world, chooser, seed=seed * 10_000 + i + 1, max_steps=8).success
            for i in range(episodes)
        )
        return episodes, successes, time.perf_counter() - start


def throughput(processes: int, episodes: int, width: int, height: int) -> float:
    """Episodes/s of `processes` worker processes together."""
    jobs = [(episodes, width, height, 1 + i, "random") for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        start = time.perf_counter()
        results = pool.map(_episodes, jobs)
        elapsed = time.perf_counter() - start
    del results
    return processes * episodes / elapsed


def main(argv: list[str] | None = None) -> int:
    """Measures simulation throughput and the reference success rates; returns the exit status."""
    parser = argparse.ArgumentParser(prog="bench.sim_episodes", description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--paper-episodes", type=int, default=4)
    parser.add_argument("--success-episodes", type=int, default=100)
    args = parser.parse_args(argv)

    n, _, seconds = _episodes((args.episodes, 64, 64, 1, "random"))
    one_core = n / seconds
    n, _, seconds = _episodes((args.paper_episodes, 640, 512, 2, "random"))
    paper = n / seconds
    print(
        f"one process: {one_core:.2f} episodes/s at 64x64, {paper:.3f} at 640x512", file=sys.stderr
    )
    scaling = {p: throughput(p, args.episodes, 64, 64) for p in (1, 2)}
    print(f"1 process {scaling[1]:.2f}, 2 processes {scaling[2]:.2f} episodes/s", file=sys.stderr)
    rates = {}
    for policy in ("random", "oracle"):
        n, successes, _ = _episodes((args.success_episodes, 64, 64, 3, policy))
        rates[policy] = successes / n
    print(
        f"\nmachine: {platform.machine()}, {multiprocessing.cpu_count()} cores, python {platform.python_version()}"
    )
    print(
        "episodes: 8 steps at most, 5 train objects, no randomization, random policy unless stated\n"
    )
    print("| measurement | result |")
    print("|---|---:|")
    print(f"| one process, 64x64 | {one_core:.2f} episodes/s |")
    print(f"| one process, 640x512 (paper profile) | {paper:.3f} episodes/s |")
    print(f"| 1 worker process, 64x64 | {scaling[1]:.2f} episodes/s |")
    print(
        f"| 2 worker processes, 64x64 | {scaling[2]:.2f} episodes/s ({scaling[2] / scaling[1]:.2f}x) |"
    )
    print(f"| random policy success, {args.success_episodes} episodes | {rates['random']:.0%} |")
    print(f"| oracle success, {args.success_episodes} episodes | {rates['oracle']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
