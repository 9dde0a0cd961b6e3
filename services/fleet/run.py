"""`make run`: the local fleet on embedded defaults.

Today it starts the episode store (SQLite in var/), streams a generated set of
sample episodes into it from several concurrent writers, reads them back
through the training data pipeline, and prints what the store holds. The
fleet's other services join this run as they are built.
"""

from __future__ import annotations

import argparse
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from services.fleet.process import ServiceProcess


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="graspfleet run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds of work")
    parser.add_argument("--workdir", default="var/fleet", help="state of this run (wiped at start)")
    parser.add_argument("--episodes", type=int, default=None, help="sample episodes to ingest")
    parser.add_argument(
        "--writers", type=int, default=4, help="concurrent writers (one robot id each)"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    num_episodes = args.episodes or (40 if args.quick else 400)
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"graspfleet local fleet: state in {workdir}/, logs in {workdir}/logs/")

    store = ServiceProcess(
        "episode-store",
        ["store", "serve"],
        {"data_dir": str(workdir / "episode-store"), "log_format": "text"},
        workdir / "logs",
    )
    print("starting episode-store ...", flush=True)
    store.start()
    print(f"episode-store SERVING on {store.address}")
    try:
        _ingest_samples(store.address, num_episodes, args.writers)
        _report(store.address, workdir / "episode-store")
    finally:
        code = store.stop()
        print(f"episode-store stopped (exit code {code})")
    return 0


def _ingest_samples(address: str, num_episodes: int, writers: int) -> None:
    from services.episode_store import client, samples

    channel, stub = client.connect(address)
    start = time.monotonic()
    with channel, tqdm(total=num_episodes, desc="ingesting sample episodes", unit="ep") as bar:

        def write(seed: int) -> None:
            robot = f"sample-arm-{seed % writers + 1}"
            client.write_episode(stub, samples.sample_episode(seed, robot_id=robot))
            bar.update(1)

        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(write, range(num_episodes)))
    elapsed = time.monotonic() - start
    print(
        f"ingested {num_episodes} episodes in {elapsed:.1f} s ({num_episodes / elapsed:.1f} episodes/s)"
    )


def _report(address: str, data_root: Path) -> None:
    from services.cli import main as cli
    from services.episode_store import client, dataset

    print("\n== store stats (graspfleet episodes stats) ==")
    cli(["episodes", "stats", "--store", address])
    channel, stub = client.connect(address)
    with channel:
        episodes = list(client.list_all(stub))
    samples = dataset.step_dataset(data_root, dataset.labeled(episodes))
    steps = sum(1 for _ in samples)
    print(
        f"\ntraining pipeline: {len(episodes)} episodes -> {steps} (x0, xt, pose, command, label) samples via tf.data"
    )
