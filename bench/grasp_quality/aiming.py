"""The aiming sub-command: what an aimed grasp is worth, from the privileged oracle's plan.

The noisy oracle (robots.policies.NoisyOraclePolicy) plans the oracle's grasp
and then misses it on purpose by a set amount. Comparing its success on the
same held-out scenes with random exploration's tells what a grasp model gains
by learning *where* objects are (position noise, random yaw) against learning
how to turn the gripper as well (the exact plan): the ceiling CEM works under.
"""

from __future__ import annotations

import argparse

from bench.grasp_quality.report import binomial, table
from bench.grasp_quality.sim import CHUNK, run_tasks, safe_policy, shared_world

# name: (position sigma m, yaw sigma rad); None is random exploration.
VARIANTS: dict[str, tuple[float, float] | None] = {
    "oracle plan": (0.0, 0.0),
    "plan + 1 cm": (0.01, 0.0),
    "plan + 2 cm": (0.02, 0.0),
    "plan, random yaw": (0.0, 10.0),
    "random exploration": None,
}


def aiming_chunk(job: tuple[str, str, int, int, list[int]]) -> list[bool]:
    """Success of each episode of one variant on the scenes `indices`."""
    from robots.episode import run_episode
    from robots.policies import NoisyOraclePolicy, RandomPolicy
    from services.sim_farm.worker import episode_seed

    variant, object_set, seed, max_steps, indices = job
    world = shared_world(object_set)
    noise = VARIANTS[variant]
    policy = RandomPolicy(world) if noise is None else NoisyOraclePolicy(world, *noise)
    policy = safe_policy(policy, world)
    return [
        bool(run_episode(world, policy, episode_seed(seed, 5, index), max_steps).success)
        for index in indices
    ]


def aiming(args: argparse.Namespace) -> dict:
    """Success of each variant on the same scenes of `args.object_set`."""
    rows = []
    for variant in VARIANTS:
        jobs = [
            (
                variant,
                args.object_set,
                args.seed,
                args.max_steps,
                list(range(i, min(i + CHUNK, args.episodes))),
            )
            for i in range(0, args.episodes, CHUNK)
        ]
        outcomes = [
            o for chunk in run_tasks(aiming_chunk, jobs, args.workers, variant) for o in chunk
        ]
        rate, error = binomial(sum(outcomes), len(outcomes))
        rows.append(
            {
                "variant": variant,
                "episodes": len(outcomes),
                "successes": sum(outcomes),
                "success_rate": rate,
                "standard_error": error,
            }
        )
    return {"object_set": args.object_set, "seed": args.seed, "variants": rows}


def print_aiming(result: dict) -> None:
    print(f"\nthe same scenes of the {result['object_set']} objects for every variant\n")
    columns = {"variant": "grasp", "episodes": "episodes", "successes": "successes"}
    columns |= {"success_rate": "success rate", "standard_error": "standard error"}
    print(table(columns, result["variants"]))
