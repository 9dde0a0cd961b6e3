"""The geometry sub-command: how far privileged geometry alone predicts random grasps."""

from __future__ import annotations

import argparse

import numpy as np

from bench.grasp_quality.report import auc, cell, table
from bench.grasp_quality.sim import CHUNK, run_tasks, safe_policy, shared_world

THRESHOLDS_M = (0.0, 0.01, 0.02, 0.04)


def geometry_chunk(job: tuple[str, int, int, list[int]]) -> list[tuple[float, bool]]:
    """(fingertip distance to the nearest object's bounding box in x-y, success) per episode."""
    from robots.episode import run_episode
    from robots.policies import CLOSE, RandomPolicy
    from services.sim_farm.worker import episode_seed

    object_set, seed, max_steps, indices = job
    world = shared_world(object_set)
    policy = safe_policy(RandomPolicy(world), world)
    out = []
    for index in indices:
        at_close: dict = {}

        def on_step(record, at_close=at_close) -> None:
            # Before the grasp moves anything: where the fingers are and where the objects lie.
            if record.action.kind == CLOSE:
                at_close["pose"], at_close["boxes"] = world.pose(), world.object_aabbs()

        run = run_episode(world, policy, episode_seed(seed, 3, index), max_steps, on_step)
        pose = at_close["pose"]
        tip = pose.position[:2] + world.fingertip_offset(pose.yaw)[:2]
        distance = min(
            float(np.linalg.norm(np.maximum(0.0, np.maximum(low[:2] - tip, tip - high[:2]))))
            for low, high in at_close["boxes"]
        )
        out.append((distance, bool(run.success)))
    return out


def geometry(args: argparse.Namespace) -> dict:
    """The learnability bound of privileged geometry for random grasps."""
    jobs = [
        (args.object_set, args.seed, args.max_steps, list(range(i, min(i + CHUNK, args.episodes))))
        for i in range(0, args.episodes, CHUNK)
    ]
    pairs = [
        p for chunk in run_tasks(geometry_chunk, jobs, args.workers, "geometry") for p in chunk
    ]
    distance = np.array([d for d, _ in pairs])
    success = np.array([s for _, s in pairs], float)
    rows = []
    for threshold in THRESHOLDS_M:
        near = distance <= threshold
        rows.append(
            {
                "within_m": threshold,
                "share": float(near.mean()),
                "success_within": float(success[near].mean()) if near.any() else None,
                "success_outside": float(success[~near].mean()) if (~near).any() else None,
            }
        )
    return {
        "episodes": len(pairs),
        "object_set": args.object_set,
        "seed": args.seed,
        "success_rate": float(success.mean()),
        "auc_negative_distance": auc(-distance, success),
        "over_an_object": rows[0],
        "thresholds": rows,
    }


def print_geometry(result: dict) -> None:
    print(
        f"\n{result['episodes']} random grasps on {result['object_set']} objects: success "
        f"{result['success_rate']:.3f}; AUC of -distance(fingertip centre, nearest object's "
        f"bounding box) {cell(result['auc_negative_distance'])}\n"
    )
    rows = [{**r, "within_cm": round(r["within_m"] * 100)} for r in result["thresholds"]]
    columns = {"within_cm": "fingertip centre within (cm) of an object", "share": "share"}
    columns |= {"success_within": "success within", "success_outside": "success outside"}
    print(table(columns, rows))
