"""RLDS export throughput: episodes/s and MB/s of `graspfleet episodes export` from a store.

A store (its own process, as in a deployment, SQLite) is filled with sample
episodes before the clock starts; the export then reads every episode with
GetEpisode and writes the TFDS dataset, as the command does. MB/s counts the
dataset's bytes on disk.

    python -m bench.rlds_export [--episodes 500] [--steps 10] [--image-size 64] [--encoding png]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import synthetic as samples
from services.episode_store import client
from services.episode_store.client import rlds_export
from services.fleet.process import ServiceProcess

ENCODINGS = {"png": common_pb2.Image.ENCODING_PNG, "jpeg": common_pb2.Image.ENCODING_JPEG}


def measure(episodes: int, steps: int, size: int, encoding: str, workdir: Path) -> dict:
    """Export throughput of a store filled with `episodes` sample episodes."""
    flags = {"data_dir": str(workdir / "data"), "log_format": "text"}
    store = ServiceProcess("episode-store", ["store", "serve"], flags, workdir / "logs").start()
    try:
        channel, stub = client.connect(store.address)
        with channel:
            for seed in range(episodes):
                record = samples.sample_episode(
                    seed, num_steps=steps, image_size=size, encoding=ENCODINGS[encoding]
                )
                client.write_episode(stub, record)
            out = workdir / "rlds"
            start = time.perf_counter()
            result = rlds_export.export(stub, episode_store_pb2.EpisodeFilter(), out)
            elapsed = time.perf_counter() - start
    finally:
        store.stop()
    written = sum(p.stat().st_size for p in out.iterdir())
    return {
        "episodes": result.episodes,
        "steps": steps,
        "image": f"{size}x{size} {encoding}",
        "seconds": elapsed,
        "episodes_per_s": result.episodes / elapsed,
        "mb_per_s": written / elapsed / 1e6,
        "kb_per_episode": written / result.episodes / 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    """Measures the export and prints the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="bench.rlds_export", description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--encoding", choices=sorted(ENCODINGS), default="png")
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.episodes, args.steps, args.image_size, args.encoding, Path(tmp))
    print("| episodes | steps | image | seconds | episodes/s | MB/s | kB/episode |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    print(
        f"| {r['episodes']} | {r['steps']} | {r['image']} | {r['seconds']:.1f} | "
        f"{r['episodes_per_s']:.1f} | {r['mb_per_s']:.2f} | {r['kb_per_episode']:.1f} |"
    )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
