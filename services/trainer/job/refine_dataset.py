"""Bulk refinement: a run's episodes through a published generator, rewritten as shards in its folder.

The GraspGAN recipes train on simulated episodes refined by the stable GraspGAN
generator; RCAN trains on the simulator's canonical renders and is validated on
real episodes canonicalized by the stable RCAN generator. Either way only the
images change: each episode is rewritten once in the store's own shard format
(`models/episodes/shards.py`) under the run's work folder, x0 and every
step image replaced, masks, poses, commands and labels kept. The summaries
handed to training point at the new shards by absolute path, which
`step_dataset` joins onto any data root unchanged, so training and the gate
read them exactly like store episodes, mixed with real episodes that stay in
the store.

Files rather than a `tf.data` map over the SavedModel: a run draws every
sample many times (steps x batch size is typically 10 to 100 times the steps in
the data) and a map would run G on each draw; refining once costs one
generator call per image.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import shards
from models.episodes.shards import EpisodeRecord, ShardDirectory
from models.generators import serving
from services.common.images import decode_image, encode_image
from services.trainer.recipes import Recipe

Summary = episode_store_pb2.EpisodeSummary
# uint8 images [N, H, W, 3] in, the generator's uint8 images [N, H, W, 3] out.
Generate = Callable[[np.ndarray], np.ndarray]
# Pixels per generator call: 256 images at 64x64, 3 at the paper's 640x512.
BATCH_PIXELS = 1 << 20


@dataclass(frozen=True)
class Rewritten:
    """Episodes rewritten with new images.

    Attributes:
        episodes: Their summaries, each `shard` the absolute path of the new shard.
        images: Images replaced (x0 and every step's).
        seconds: Wall time of the rewrite.
        skipped: Ids of episodes left out (no canonical renders to swap in).
    """

    episodes: list[Summary]
    images: int
    seconds: float
    skipped: tuple[str, ...] = field(default_factory=tuple)

    def metadata(self) -> dict:
        """The numbers recorded with the model."""
        return {
            "episodes": len(self.episodes),
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "skipped_episodes": len(self.skipped),
        }


def read_record(data_root: str | Path, summary: Summary) -> EpisodeRecord:
    """The whole episode (pixels included) from its shard."""
    records = list(tf.data.TFRecordDataset(str(Path(data_root) / summary.shard)))
    if len(records) != 1:
        raise ValueError(f"{summary.shard}: expected 1 record, found {len(records)}")
    return shards.decode(records[0].numpy())


def load_generator(model_base: str | Path, ref: dict) -> Generate:
    """The published generator `ref` names ({"kind", "name", "version"}), as an image function.

    The version is checked by the refiner service's own warm-up.

    Raises:
        ValueError: that version is missing or fails its warm-up.
    """
    loaded = serving.load_generator(Path(model_base), ref["kind"], ref["name"], int(ref["version"]))
    return lambda images: serving.generate(loaded, images)[0]


class _Writer:
    """Writes rewritten episodes under one folder and collects their summaries."""

    def __init__(self, out_dir: Path) -> None:
        self.directory = ShardDirectory(Path(out_dir).resolve())
        self.summaries: dict[str, Summary] = {}

    def write(self, summary: Summary, record: EpisodeRecord) -> None:
        payload = shards.encode(record)
        digest = hashlib.sha256(payload).hexdigest()
        relative = self.directory.relative_path(summary.episode_id, digest, summary.robot_id)
        self.directory.write(relative, payload)
        rewritten = Summary()
        rewritten.CopyFrom(summary)
        rewritten.shard = str(self.directory.root / relative)
        self.summaries[summary.episode_id] = rewritten

    def result(self, episodes: Sequence[Summary], images: int, started: float) -> Rewritten:
        kept = [self.summaries[e.episode_id] for e in episodes if e.episode_id in self.summaries]
        skipped = tuple(e.episode_id for e in episodes if e.episode_id not in self.summaries)
        return Rewritten(kept, images, time.perf_counter() - started, skipped)


def _with_images(record: EpisodeRecord, images: Sequence[common_pb2.Image]) -> EpisodeRecord:
    """`record` with x0 and then each step's image replaced by `images`."""
    header = common_pb2.EpisodeHeader()
    header.CopyFrom(record.header)
    header.x0.CopyFrom(images[0])
    steps = []
    for step, image in zip(record.steps, images[1:], strict=True):
        copy = common_pb2.Step()
        copy.CopyFrom(step)
        copy.image.CopyFrom(image)
        steps.append(copy)
    return EpisodeRecord(header=header, steps=tuple(steps), outcome=record.outcome)


def refine_episodes(
    generate: Generate,
    data_root: str | Path,
    episodes: Sequence[Summary],
    out_dir: str | Path,
    *,
    batch_pixels: int = BATCH_PIXELS,
) -> Rewritten:
    """Runs x0 and every step image of `episodes` through `generate` and writes the results.

    Images of several episodes go through one generator call, up to about
    `batch_pixels` pixels per call.

    Args:
        generate: The generator (see `load_generator`).
        data_root: The store's data folder the summaries' shards are relative to.
        episodes: The episodes to refine (one image size).
        out_dir: Where the refined shards go (created).
        batch_pixels: Pixels per generator call.
    """
    started = time.perf_counter()
    writer = _Writer(Path(out_dir))
    pending: list[tuple[Summary, EpisodeRecord, list[np.ndarray]]] = []
    pixels = images = 0

    def flush() -> None:
        if not pending:
            return
        batch = np.stack([image for _, _, originals in pending for image in originals])
        refined = iter(generate(batch))
        for summary, record, originals in pending:
            # PNG: lossless, as the store keeps sim images by default.
            replaced = [encode_image(next(refined)) for _ in originals]
            writer.write(summary, _with_images(record, replaced))
        pending.clear()

    for summary in episodes:
        record = read_record(data_root, summary)
        originals = [decode_image(record.header.x0)]
        originals += [decode_image(step.image) for step in record.steps]
        pending.append((summary, record, originals))
        images += len(originals)
        pixels += sum(image.shape[0] * image.shape[1] for image in originals)
        if pixels >= batch_pixels:
            flush()
            pixels = 0
    flush()
    return writer.result(episodes, images, started)


def canonical_episodes(
    data_root: str | Path, episodes: Sequence[Summary], out_dir: str | Path
) -> Rewritten:
    """Rewrites `episodes` with the simulator's canonical renders in place of x0 and each image.

    Episodes collected without canonical renders (`render_canonical` off) are
    skipped and listed in the result.
    """
    started = time.perf_counter()
    writer = _Writer(Path(out_dir))
    images = 0
    for summary in episodes:
        record = read_record(data_root, summary)
        if not carries_canonical(record):
            continue
        canonical = [record.header.x0_canonical, *(step.canonical for step in record.steps)]
        writer.write(summary, _with_images(record, canonical))
        images += len(canonical)
    return writer.result(episodes, images, started)


def carries_canonical(record: EpisodeRecord) -> bool:
    """Whether x0 and every step of the episode have a canonical render."""
    return record.header.HasField("x0_canonical") and all(
        step.HasField("canonical") for step in record.steps
    )


def with_canonical(
    data_root: str | Path, episodes: Sequence[Summary]
) -> tuple[list[Summary], list[Summary]]:
    """(episodes with canonical renders, episodes without), each in the given order."""
    carrying = {e.episode_id for e in episodes if carries_canonical(read_record(data_root, e))}
    return (
        [e for e in episodes if e.episode_id in carrying],
        [e for e in episodes if e.episode_id not in carrying],
    )


@dataclass(frozen=True)
class Prepared:
    """A grasp recipe's data after its generator was applied.

    Attributes:
        train: Training episodes (rewritten ones point at the work folder).
        validation: Held-out real episodes (canonicalized for RCAN).
        metadata: What was done to the data, recorded with the model.
    """

    train: list[Summary]
    validation: list[Summary]
    metadata: dict


def prepare(
    recipe: Recipe,
    generator: dict | None,
    data_root: str | Path,
    model_base: str | Path,
    train: Sequence[Summary],
    validation: Sequence[Summary],
    work_dir: Path,
    report: Callable[[str], None] = lambda message: None,
) -> Prepared:
    """Applies a grasp recipe's generator (and RCAN's canonical renders) to its episodes.

    Args:
        recipe: The grasp recipe.
        generator: The version it applies, as `versions.generator` resolved it at submission.
        data_root: The store's data folder.
        model_base: Where the generator is published.
        train: The selected training episodes.
        validation: The held-out real episodes.
        work_dir: The run's scratch folder for rewritten shards.
        report: Called with a sentence before each long step.

    Raises:
        ValueError: the generator cannot be loaded, or RCAN's simulated episodes
            carry no canonical renders.
    """
    train, validation = list(train), list(validation)
    if generator is None:
        return Prepared(train, validation, {})
    ref = f"{generator['name']}:{generator['version']}"
    sim = [e for e in train if e.domain == common_pb2.DOMAIN_SIM]
    generate = load_generator(model_base, generator)
    if not recipe.canonical:
        report(f"refining {len(sim)} simulated episodes with {ref}")
        refined = refine_episodes(generate, data_root, sim, work_dir / "refined")
        applied = {**generator, "applied_to": "simulated training episodes", **refined.metadata()}
        return Prepared(_replaced(train, refined), validation, {"refiner": applied})
    report(f"swapping in the canonical renders of {len(sim)} simulated episodes")
    canonical = canonical_episodes(data_root, sim, work_dir / "canonical")
    if not canonical.episodes:
        raise ValueError(
            f"none of the {len(sim)} selected simulated episodes carries canonical renders: "
            "collect them with render_canonical (sim-farm StartCollection) and select them "
            "by data.object_set or the time window"
        )
    report(f"canonicalizing {len(validation)} held-out real episodes with {ref}")
    real = refine_episodes(generate, data_root, validation, work_dir / "canonical-real")
    metadata = {
        "training_images": {"source": "canonical renders", **canonical.metadata()},
        "refiner": {**generator, "applied_to": "held-out real episodes", **real.metadata()},
    }
    return Prepared(_replaced(train, canonical), real.episodes, metadata)


def _replaced(episodes: list[Summary], rewritten: Rewritten) -> list[Summary]:
    """`episodes` with the rewritten ones swapped in and skipped simulated ones left out."""
    new = {e.episode_id: e for e in rewritten.episodes}
    skipped = set(rewritten.skipped)
    return [new.get(e.episode_id, e) for e in episodes if e.episode_id not in skipped]
