"""Episode-store ingest throughput: episodes/s and MB/s for 1 and 8 writers, SQLite and PostgreSQL.

Each episode has 10 steps of 64x64 images (plus x0 and masks, as the sim-farm
sends them). The store runs as its own process, as in a deployment; episodes
are built before the clock starts, so only streaming and storing are timed.
PostgreSQL runs with fsync on, like SQLite's synchronous=FULL, so both
backends pay for durability.

    python -m bench.ingest [--episodes 200] [--writers 1 8] [--backends sqlite postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from graspfleet.v1 import common_pb2
from models.episodes import synthetic as samples
from services.episode_store import client
from services.episode_store.local_postgres import local_postgres
from services.fleet.process import ServiceProcess

ENCODINGS = {"png": common_pb2.Image.ENCODING_PNG, "raw": common_pb2.Image.ENCODING_RAW}


def _wire_bytes(record) -> int:
    return sum(r.ByteSize() for r in client.episode_requests(record))


def measure(backend: str, writers: int, records: list, workdir: Path, dsn: str | None) -> dict:
    """Ingest throughput of one store backend with `writers` concurrent writers of `records`."""
    flags = {"data_dir": str(workdir / "data"), "log_format": "text"}
    if dsn:
        flags["postgres_dsn"] = dsn
    store = ServiceProcess("episode-store", ["store", "serve"], flags, workdir / "logs").start()
    try:
        channel, stub = client.connect(store.address)
        with channel:
            client.write_episode(stub, samples.sample_episode(10**6, num_steps=1))  # warm-up
            start = time.perf_counter()
            with ThreadPoolExecutor(writers) as pool:
                responses = list(pool.map(lambda r: client.write_episode(stub, r), records))
            elapsed = time.perf_counter() - start
    finally:
        store.stop()
    assert not any(r.duplicate for r in responses)
    wire = sum(_wire_bytes(r) for r in records)
    return {
        "backend": backend,
        "writers": writers,
        "episodes": len(records),
        "seconds": elapsed,
        "episodes_per_s": len(records) / elapsed,
        "mb_per_s": wire / elapsed / 1e6,
        "kb_per_episode": wire / len(records) / 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    """Measures each backend and writer count and prints the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="bench.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--encoding", choices=sorted(ENCODINGS), default="png")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"]
    )
    args = parser.parse_args(argv)

    print(
        f"building {args.episodes} episodes ({args.steps} steps, {args.image_size}x{args.image_size} {args.encoding}) ...",
        file=sys.stderr,
    )
    results = []
    for backend in args.backends:
        for writers in args.writers:
            # Fresh ids per run so nothing is a duplicate; a fresh store each time.
            offset = len(results) * args.episodes
            records = [
                samples.sample_episode(
                    offset + i,
                    num_steps=args.steps,
                    image_size=args.image_size,
                    encoding=ENCODINGS[args.encoding],
                    robot_id=f"bench-{i % writers}",
                )
                for i in range(args.episodes)
            ]
            with (
                tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp,
                contextlib.ExitStack() as stack,
            ):
                dsn = (
                    stack.enter_context(local_postgres(durable=True))
                    if backend == "postgres"
                    else None
                )
                results.append(measure(backend, writers, records, Path(tmp), dsn))
            r = results[-1]
            print(
                f"{backend:>8} {writers} writer(s): {r['episodes_per_s']:.1f} episodes/s, {r['mb_per_s']:.2f} MB/s",
                file=sys.stderr,
            )

    print(
        f"\nmachine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"
    )
    print(
        f"episode: {args.steps} steps of {args.image_size}x{args.image_size} {args.encoding} images + x0 + masks, "
        f"{results[0]['kb_per_episode']:.1f} kB on the wire\n"
    )
    print("| backend | writers | episodes | seconds | episodes/s | MB/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['backend']} | {r['writers']} | {r['episodes']} | {r['seconds']:.1f} | "
            f"{r['episodes_per_s']:.1f} | {r['mb_per_s']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
