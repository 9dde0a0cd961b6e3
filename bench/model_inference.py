"""Grasp-success model: training steps/s from store data, and serving latency per CEM call.

Sample episodes (64x64 PNG, 10 steps, half SIM half REAL, balanced outcomes)
go into an in-process episode store; `train` runs each recipe (naive mixing,
DBN + DANN) at the default profile and reports steady-state optimizer steps/s,
input pipeline included. The last model is exported, loaded back with
`tf.saved_model.load`, and its `serving_default` signature is timed for one
image pair x 64 motions (one CEM iteration) and for 8 pairs x 64 motions.

    python -m bench.model_inference [--episodes 64] [--steps 200] [--batch-size 32] [--calls 200]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from graspfleet.v1 import common_pb2
from models.episodes.selection import split_episodes
from models.episodes.synthetic import sample_episode
from models.grasp_success import export
from models.grasp_success.training import TrainSpec, train
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server

RECIPES = {
    "naive-mix": {"dbn": False, "dann": False},
    "dbn-dann": {"dbn": True, "dann": True},
}


def fill_store(data_root: Path, episodes: int, steps: int) -> list:
    """Writes sample episodes (alternating domains and outcomes); returns their summaries.

    Every sample episode has objects of its own, so the validation split holds out objects.
    """
    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(data_root)))
    try:
        channel, stub = client.connect(server.address)
        with channel:
            for seed in range(episodes):
                record = sample_episode(
                    seed,
                    domain=common_pb2.DOMAIN_SIM if seed % 2 == 0 else common_pb2.DOMAIN_REAL,
                    num_steps=steps,
                )
                record.outcome.result = (
                    common_pb2.GRASP_RESULT_SUCCESS
                    if (seed // 2) % 2 == 0
                    else common_pb2.GRASP_RESULT_FAILURE
                )
                client.write_episode(stub, record)
            return list(client.list_all(stub))
    finally:
        server.stop(grace_s=0)


def latency_ms(signature, pairs: int, motions: int, calls: int) -> dict[str, float]:
    """Median and p90 wall time of one signature call, after a warm-up call."""
    rng = np.random.default_rng(0)
    inputs = {
        export.INPUT_X0: tf.constant(rng.integers(0, 256, (pairs, 64, 64, 3)), tf.uint8),
        export.INPUT_XT: tf.constant(rng.integers(0, 256, (pairs, 64, 64, 3)), tf.uint8),
        export.INPUT_MOTIONS: tf.constant(rng.normal(size=(pairs, motions, 5)), tf.float32),
    }
    signature(**inputs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        signature(**inputs)[export.OUTPUT_SUCCESS].numpy()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median": float(np.median(times)), "p90": float(np.percentile(times, 90))}


def main(argv: list[str] | None = None) -> int:
    """Times training steps and serving calls and prints the table; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="bench.model_inference", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--episode-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        summaries = fill_store(Path(tmp) / "store", args.episodes, args.episode_steps)
        train_part, validation = split_episodes(summaries, 0.2, seed=0)
        for recipe, options in RECIPES.items():
            spec = TrainSpec(recipe=recipe, steps=args.steps, batch_size=args.batch_size, **options)
            result = train(
                spec,
                Path(tmp) / "store",
                train_part,
                validation,
                Path(tmp) / "models",
                progress_bar=False,
            )
            rows.append((recipe, result.steps_per_s, result.metrics.get("accuracy", float("nan"))))
            print(f"{recipe}: {result.steps_per_s:.1f} steps/s", file=sys.stderr)
        signature = tf.saved_model.load(str(result.path)).signatures[export.SIGNATURE_KEY]
        single = latency_ms(signature, 1, 64, args.calls)
        eight = latency_ms(signature, 8, 64, args.calls)

    print(
        f"\nmachine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}, tensorflow {tf.__version__}"
    )
    print(
        f"data: {args.episodes} episodes x {args.episode_steps} steps of 64x64; "
        f"default profile (56x56 crops), batch {args.batch_size}, {args.steps} steps\n"
    )
    print("| recipe | steps/s | validation accuracy |")
    print("|---|---:|---:|")
    for recipe, rate, accuracy in rows:
        print(f"| {recipe} | {rate:.1f} | {accuracy:.3f} |")
    print("\n| serving_default call | median ms | p90 ms |")
    print("|---|---:|---:|")
    print(f"| 1 pair x 64 motions | {single['median']:.2f} | {single['p90']:.2f} |")
    print(f"| 8 pairs x 64 motions | {eight['median']:.2f} | {eight['p90']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
