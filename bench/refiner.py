"""Refiner: generator images/s (the exported signature) and GraspGAN / RCAN training steps/s.

Generator throughput is measured on the served path: a generator exported by
`export_generator`, loaded back with `tf.saved_model.load`, its
`serving_default` signature called on uint8 batches (untrained weights: the
cost does not depend on them). The default profile runs at 64x64 and the
paper profile at 472x472. GraspGAN training runs `train_graspgan` on sample
episodes in an in-process episode store (input pipeline included; C is the
grasp model of the matching profile, with DBN and DANN); RCAN training runs
`fit_rcan` on in-memory triples. Rates are steady state (the first step,
which traces the graphs, is not counted).

    python -m bench.refiner [--device cpu|gpu] [--profiles default,paper] [--batch-sizes 1,8]
        [--calls 20] [--max-seconds 20] [--train-steps 30] [--train-batch 16]
        [--paper-train-steps 3] [--paper-train-batch 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"tiny": 64, "default": 64, "paper": 472}
TASK_PROFILES = {"tiny": "default", "default": "default", "paper": "paper"}


def select_device(device: str) -> str:
    """Hides the GPUs for `cpu`; checks one is there for `gpu`. Returns a description."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
        return f"cpu ({os.cpu_count()} cores)"
    if not gpus:
        raise SystemExit("--device gpu: TensorFlow sees no GPU on this machine")
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"gpu ({details.get('device_name', gpus[0].name)})"


def generator_rate(
    profile: str, batch: int, calls: int, max_seconds: float, model_base: Path
) -> float:
    """Images per second through the exported signature of a `profile` generator.

    Times `calls` calls, or fewer (at least 2) once `max_seconds` have passed.
    """
    import tensorflow as tf

    from models.generators import export
    from models.generators.networks import build_generator, profile_configs

    size = SIZES[profile]
    generator = build_generator(profile_configs(profile)[0])
    path = export.export_generator(
        generator, model_base, profile, export.KIND_GRASPGAN, (size,) * 2
    )
    signature = tf.saved_model.load(str(path)).signatures[export.SIGNATURE_KEY]
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    signature(images=images)[export.OUTPUT_IMAGES].numpy()  # warm-up
    start, done = time.perf_counter(), 0
    while done < calls and (done < 2 or time.perf_counter() - start < max_seconds):
        signature(images=images)[export.OUTPUT_IMAGES].numpy()
        done += 1
    return done * batch / (time.perf_counter() - start)


def sample_store(data_root: Path, episodes: int, steps: int, size: int) -> list:
    """Sample episodes (alternating SIM / REAL and outcomes) in an in-process store."""
    from graspfleet.v1 import common_pb2
    from models.episodes.synthetic import sample_episode
    from services.episode_store import client
    from services.episode_store.config import EpisodeStoreConfig
    from services.episode_store.server import create_server

    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(data_root)))
    try:
        channel, stub = client.connect(server.address)
        with channel:
            for seed in range(episodes):
                domain = common_pb2.DOMAIN_SIM if seed % 2 == 0 else common_pb2.DOMAIN_REAL
                record = sample_episode(seed, domain=domain, num_steps=steps, image_size=size)
                success = (seed // 2) % 2 == 0
                record.outcome.result = (
                    common_pb2.GRASP_RESULT_SUCCESS if success else common_pb2.GRASP_RESULT_FAILURE
                )
                client.write_episode(stub, record)
            return list(client.list_all(stub))
    finally:
        server.stop(grace_s=0)


def graspgan_rate(profile: str, steps: int, batch: int, tmp: Path) -> float:
    """Steady-state alternating GraspGAN steps per second on store data."""
    from models.generators.graspgan_training import GraspGANSpec, train_graspgan

    size = SIZES[profile]
    episodes = sample_store(tmp / f"store-{profile}", 8, 4, size)
    spec = GraspGANSpec(
        profile=profile,
        task_profile=TASK_PROFILES[profile],
        steps=steps,
        batch_size=batch,
        dbn=True,
        dann=True,
        log_every=max(1, steps),
        image_every=0,
        shuffle_buffer=64,
    )
    return train_graspgan(
        spec, tmp / f"store-{profile}", episodes, [], None, progress_bar=False
    ).steps_per_s


def rcan_rate(profile: str, steps: int, batch: int) -> float:
    """Steady-state RCAN steps per second (with the GAN term) on in-memory triples."""
    import tensorflow as tf

    from models.generators.data import CANONICAL, IMAGE, MASK
    from models.generators.rcan import RCANModels, RCANSpec
    from models.generators.rcan_training import fit_rcan
    from robots.canonical import PALETTE

    size = SIZES[profile]
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 4, (batch, size, size)).astype(np.uint8)
    triples = {
        IMAGE: rng.integers(0, 256, (batch, size, size, 3)).astype(np.uint8),
        CANONICAL: PALETTE[masks],
        MASK: masks,
    }
    batches = tf.data.Dataset.from_tensors(triples).repeat()
    spec = RCANSpec(
        profile=profile,
        steps=steps,
        batch_size=batch,
        gan_weight=1.0,
        log_every=steps,
        image_every=0,
    )
    _, rate = fit_rcan(RCANModels.build(spec), spec, batches, progress_bar=False)
    return rate


def main(argv: list[str] | None = None) -> int:
    """Times the generators' inference and training, prints the tables; returns the exit status."""
    parser = argparse.ArgumentParser(prog="bench.refiner", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--profiles", default="default,paper", help="generator profiles to time")
    parser.add_argument("--batch-sizes", default="1,8", help="generator batch sizes")
    parser.add_argument("--calls", type=int, default=20, help="timed signature calls per case")
    parser.add_argument(
        "--max-seconds", type=float, default=20.0, help="stop timing a case after this (2+ calls)"
    )
    parser.add_argument(
        "--train-steps", type=int, default=30, help="default-profile steps (0 to skip)"
    )
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument(
        "--paper-train-steps", type=int, default=3, help="paper-profile steps (0 to skip)"
    )
    parser.add_argument(
        "--paper-train-batch", type=int, default=2, help="at least 2 (batch norm in C)"
    )
    args = parser.parse_args(argv)
    device = select_device(args.device)

    import tensorflow as tf

    profiles = [p for p in args.profiles.split(",") if p]
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    generation, training = [], []
    with tempfile.TemporaryDirectory(prefix="bench-refiner-") as tmp:
        for profile in profiles:
            for batch in batches:
                rate = generator_rate(
                    profile, batch, args.calls, args.max_seconds, Path(tmp) / "models"
                )
                generation.append((profile, SIZES[profile], batch, rate))
                print(f"generator {profile} x{batch}: {rate:.3g} images/s", file=sys.stderr)
        runs = []
        if args.train_steps:
            runs.append(("default", args.train_steps, args.train_batch))
        if args.paper_train_steps:
            runs.append(("paper", args.paper_train_steps, args.paper_train_batch))
        for profile, steps, batch in runs:
            for name in ("GraspGAN", "RCAN"):
                try:
                    if name == "GraspGAN":
                        rate = graspgan_rate(profile, steps, batch, Path(tmp))
                    else:
                        rate = rcan_rate(profile, steps, batch)
                except (tf.errors.ResourceExhaustedError, MemoryError) as err:
                    print(f"{name} {profile}: out of memory ({err})", file=sys.stderr)
                    rate = float("nan")
                training.append((name, profile, SIZES[profile], batch, steps, rate))
                print(f"{name} {profile} x{batch}: {rate:.3f} steps/s", file=sys.stderr)

    print(
        f"\nmachine: {device}, {platform.machine()}, python {platform.python_version()}, "
        f"tensorflow {tf.__version__}\n"
    )
    print("| generator (serving_default) | image | batch | images/s |")
    print("|---|---|---:|---:|")
    for profile, size, batch, rate in generation:
        print(f"| {profile} | {size}x{size} | {batch} | {rate:.3g} |")
    print("\n| training | profile | image | batch | steps timed | steps/s |")
    print("|---|---|---|---:|---:|---:|")
    for name, profile, size, batch, steps, rate in training:
        rate_text = "out of memory" if np.isnan(rate) else f"{rate:.3f}"
        print(f"| {name} | {profile} | {size}x{size} | {batch} | {steps - 1} | {rate_text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
