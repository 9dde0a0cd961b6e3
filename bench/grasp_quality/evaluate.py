"""The evaluate sub-command: CEM against random exploration on held-out objects, closed loop."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.grasp_quality.report import binomial, cell, paired, table


def behaviour(stub, summaries: Sequence, max_steps: int) -> dict:
    """What the command source did: steps, closes before the last step, raises, closing heights."""
    from graspfleet.v1 import common_pb2, episode_store_pb2
    from robots.config import Workspace

    floor = Workspace().low[2]
    steps, raises, heights, predicted = [], [], [], []
    for summary in summaries:
        episode = stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(episode_id=summary.episode_id, include_steps=True),
            timeout=30,
        )
        steps.append(len(episode.steps))
        raises.append(sum(s.command.kind == common_pb2.Command.KIND_RAISE for s in episode.steps))
        heights.append((episode.outcome.final_pose.position_m.z - floor) * 100.0)
        if episode.steps and episode.steps[-1].HasField("predicted_success"):
            predicted.append(episode.steps[-1].predicted_success)
    if not steps:
        return {}
    p10, p50, p90 = (float(v) for v in np.percentile(heights, [10, 50, 90]))
    return {
        "mean_steps": float(np.mean(steps)),
        # The last step always closes; a close before it is the command source's own choice.
        "closed_early": int(sum(n < max_steps for n in steps)),
        "raises_per_episode": float(np.mean(raises)),
        "close_height_cm_p10": p10,
        "close_height_cm_p50": p50,
        "close_height_cm_p90": p90,
        "mean_predicted_success_at_close": float(np.mean(predicted)) if predicted else None,
    }


def evaluate(args: argparse.Namespace) -> dict:
    """CEM on the newest model under --models against random exploration, same held-out scenes."""
    from graspfleet.v1 import episode_store_pb2
    from models import registry
    from models.grasp_success import export
    from services.episode_store import client
    from services.fleet.run import Fleet, held_out_trial

    models = Path(args.models).resolve()
    versions = registry.versions(models / export.DEFAULT_NAME)
    if not versions:
        raise SystemExit(
            f"no model versions under {models / export.DEFAULT_NAME}: run `train --models {models}`"
        )
    planner_flags = dict(_key_value(item) for item in args.planner)
    work = Path(args.work) / time.strftime("%Y%m%d-%H%M%S")
    fleet = Fleet(work)
    try:
        store = fleet.start("episode-store", ["store", "serve"], {"data_dir": str(work / "store")})
        predictor = fleet.start(
            "grasp-predictor",
            ["predictor", "serve"],
            {"model_base_path": str(models), "poll_interval_s": "1"},
        )
        planner = fleet.start(
            "servo-planner",
            ["planner", "serve"],
            {"predictor_address": predictor.address, **planner_flags},
        )
        farm = fleet.start(
            "sim-farm",
            ["sim-farm", "serve"],
            {
                "store_address": store.address,
                "planner_address": planner.address,
                "spool_dir": str(work / "spool"),
                "workers": str(args.workers),
            },
        )
        results = {}
        for name in ("cem", "random"):
            collection = held_out_trial(
                farm,
                name,
                args.episodes,
                shards=args.workers,
                max_steps=args.max_steps,
                seed=args.seed,
            )
            channel, stub = client.connect(store.address)
            with channel:
                found = list(
                    client.list_all(
                        stub, episode_store_pb2.EpisodeFilter(collection_id=f"eval-{name}")
                    )
                )
                rate, error = binomial(collection.successes, collection.episodes_done)
                results[name] = {
                    "episodes": collection.episodes_done,
                    "successes": collection.successes,
                    "success_rate": rate,
                    "standard_error": error,
                    "outcomes": {e.seed: bool(e.label.success) for e in found},
                    **behaviour(stub, found, args.max_steps),
                }
    finally:
        fleet.stop()
    cem, rnd = results["cem"].pop("outcomes"), results["random"].pop("outcomes")
    pairs = [(cem[seed], rnd[seed]) for seed in cem.keys() & rnd.keys()]
    return {
        "models": str(models),
        "version": versions[-1],
        "planner": planner_flags,
        "episodes": args.episodes,
        "seed": args.seed,
        "work": str(work),
        "policies": results,
        "paired": paired(pairs),
    }


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(
            f"--planner {item!r}: give planner settings as KEY=VALUE, e.g. close_ratio=0.8"
        )
    return key.replace("-", "_"), value


def print_evaluate(result: dict) -> None:
    flags = ", ".join(f"{k}={v}" for k, v in result["planner"].items()) or "defaults"
    print(
        f"\nmodel {result['models']} (version {result['version']}), planner {flags}; "
        f"{result['episodes']} episodes per policy on held-out objects, seed {result['seed']}\n"
    )
    rows = [{"policy": name, **p} for name, p in result["policies"].items()]
    columns = {"policy": "policy", "episodes": "episodes", "successes": "successes"}
    columns |= {"success_rate": "success rate", "standard_error": "standard error"}
    print(table(columns, rows))
    pairs = result["paired"]
    print(
        f"\nsame {pairs['scenes']} scenes: both succeed {pairs['both']}, CEM only "
        f"{pairs['cem_only']}, random only {pairs['random_only']}, neither {pairs['neither']}; "
        f"CEM - random {cell(pairs['difference'])} +- {cell(pairs['difference_standard_error'])}\n"
    )
    columns = {"policy": "policy", "mean_steps": "mean steps", "closed_early": "closed early"}
    columns |= {"raises_per_episode": "raises / episode", "close_height_cm_p10": "close z p10 cm"}
    columns |= {"close_height_cm_p50": "p50 cm", "close_height_cm_p90": "p90 cm"}
    print(table(columns | {"mean_predicted_success_at_close": "mean P at close"}, rows))
