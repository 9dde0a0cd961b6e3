"""The collect sub-command: sim episodes on train and held-out objects into a data folder."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from bench.grasp_quality.data import (
    MANIFEST,
    SPLITS,
    DataSettings,
    episode_id,
    episode_index,
    open_store,
    read_manifest,
    split_episodes,
)
from bench.grasp_quality.report import log, table
from bench.grasp_quality.sim import CHUNK, run_tasks, safe_policy, shared_world

ROBOT_ID = "grasp-quality"


def episode_plan(settings: DataSettings, split: str, index: int) -> tuple[int, int, int, str]:
    """(scene seed, attempt, policy seed, policy name) of one episode of a split."""
    from services.sim_farm.worker import episode_seed

    if split == "test":
        scene = episode_seed(settings.seed, 1, index)
        return scene, 0, scene, "random"
    scene_index, attempt = divmod(index, settings.attempts)
    scene = episode_seed(settings.seed, 0, scene_index)
    draw = np.random.default_rng(episode_seed(settings.seed, 2, index)).random()
    policy = "noisy-oracle" if draw < settings.oracle_fraction else "random"
    return scene, attempt, scene + attempt, policy


def collect_chunk(job: tuple[DataSettings, str, list[int]]) -> list:
    """Runs some episodes of a split; returns their store records (picklable)."""
    from models.episodes import records as episodes
    from robots.episode import run_episode
    from robots.policies import NoisyOraclePolicy, RandomPolicy

    settings, split, indices = job
    world = shared_world(SPLITS[split], settings.objects_per_bin)
    policies = {
        "random": RandomPolicy(world),
        "noisy-oracle": NoisyOraclePolicy(
            world, settings.oracle_sigma_m, settings.oracle_yaw_sigma_rad
        ),
    }
    records = []
    for index in indices:
        scene, attempt, policy_seed, name = episode_plan(settings, split, index)
        run = run_episode(
            world,
            safe_policy(policies[name], world),
            scene,
            settings.max_steps,
            policy_seed=policy_seed,
        )
        record = episodes.to_record(
            run,
            episode_id=episode_id(split, index),
            robot_id=ROBOT_ID,
            domain="sim",
            randomization="none",
            policy=name,
            object_set=SPLITS[split],
            collection_id=split,
            with_masks=settings.masks,
        )
        record.header.attributes.update(attempt=str(attempt), policy_seed=str(policy_seed))
        records.append(record)
    return records


def collect(settings: DataSettings, data: Path, counts: dict[str, int], workers: int) -> dict:
    """Adds the missing episodes of each split to the data folder; returns the summary."""
    from services.common.files import write_atomically

    data.mkdir(parents=True, exist_ok=True)
    path = data / MANIFEST
    if path.exists():
        stored = read_manifest(data)
        if stored != settings:
            changed = {
                f.name: (getattr(stored, f.name), getattr(settings, f.name))
                for f in dataclasses.fields(settings)
                if getattr(stored, f.name) != getattr(settings, f.name)
            }
            raise SystemExit(
                f"{data} holds episodes collected with other settings (stored, asked): {changed}; "
                "collect into another --data folder"
            )
    else:
        write_atomically(path, json.dumps({"settings": dataclasses.asdict(settings)}).encode())
    store = open_store(data)
    try:
        started, new = time.perf_counter(), 0
        for split, count in counts.items():
            present = {e.episode_id for e in split_episodes(store, split)}
            missing = [i for i in range(count) if episode_id(split, i) not in present]
            if not missing:
                log(f"{split}: the folder already has {count} episodes; nothing to collect")
                continue
            jobs = [
                (settings, split, missing[i : i + CHUNK]) for i in range(0, len(missing), CHUNK)
            ]
            desc = f"{split} ({len(missing)} episodes)"
            for records in run_tasks(collect_chunk, jobs, workers, desc):
                for record in records:
                    store.ingest(record)
                new += len(records)
        seconds = time.perf_counter() - started
        rows = []
        for split, count in counts.items():
            chosen = [e for e in split_episodes(store, split) if episode_index(e) < count]
            for policy in sorted({e.policy for e in chosen}):
                mine = [e for e in chosen if e.policy == policy]
                successes = sum(e.label.success for e in mine)
                rows.append(
                    {
                        "split": split,
                        "objects": SPLITS[split],
                        "policy": policy,
                        "episodes": len(mine),
                        "steps": sum(e.num_steps for e in mine),
                        "successes": successes,
                        "success_rate": successes / len(mine),
                    }
                )
    finally:
        store.close()
    return {
        "data": str(data),
        "settings": dataclasses.asdict(settings),
        "new_episodes": new,
        "seconds": seconds,
        "episodes_per_s": new / seconds if new else None,
        "splits": rows,
    }


def print_collect(result: dict) -> None:
    s = result["settings"]
    print(
        f"\ndata: {result['data']}; attempts per training scene {s['attempts']}, noisy-oracle "
        f"share {s['oracle_fraction']} (sigma {s['oracle_sigma_m']} m, "
        f"{s['oracle_yaw_sigma_rad']} rad); {result['new_episodes']} new episodes in "
        f"{result['seconds']:.0f} s\n"
    )
    columns = {"split": "split", "objects": "objects", "policy": "policy", "episodes": "episodes"}
    columns |= {"steps": "steps", "successes": "successes", "success_rate": "success rate"}
    print(table(columns, result["splits"]))
