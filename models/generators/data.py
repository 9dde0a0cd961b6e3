"""Training data of the refiner, straight from the episode store's shards.

GraspGAN learns from two streams: simulated steps with their masks and labels
(x0, xt, x0_mask, mask, motion, label, domain) and real steps (x0, xt, motion;
with label and domain when the recipe uses real labels). RCAN learns from
(randomized image, canonical image, mask) triples of simulated episodes
collected with canonical renders. Samples keep the episode's full image size:
the generator is size-agnostic, and the task network takes its own crops.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from graspfleet.v1 import episode_store_pb2
from models.episodes import dataset, selection
from models.episodes.dataset import MASK, X0, X0_MASK, XT
from models.grasp_success.samples import (
    MOTION,
    REAL,
    SIM,
    bucket_name,
    grasp_motion,
    split_buckets,
    step_sample,
)

Summary = episode_store_pb2.EpisodeSummary

# RCAN sample keys, declared once.
IMAGE = "image"
CANONICAL = "canonical"
# MASK ("mask") is the store's key, used in every stream.


def _squeeze_masks(sample: dict) -> dict:
    return {**sample, X0_MASK: sample[X0_MASK][..., 0], MASK: sample[MASK][..., 0]}


def _labeled_stream(
    data_root: str | Path,
    episodes: Sequence[Summary],
    domain: int,
    *,
    positive_fraction: float,
    include_masks: bool,
    seed: int,
    shuffle_buffer: int,
) -> tf.data.Dataset:
    """Endless steps of `domain`'s labeled episodes, successes at `positive_fraction`."""
    buckets = split_buckets(episodes)
    order = random.Random(seed)
    streams = []
    for success in (False, True):
        members = list(buckets[(domain, success)])
        if not members:
            raise ValueError(
                f"no labeled {bucket_name((domain, success))} episodes: the refiner's task "
                "network needs successes and failures; add such episodes or change the selection"
            )
        order.shuffle(members)

        steps = dataset.step_dataset(data_root, members, include_masks=include_masks)
        steps = steps.map(
            functools.partial(step_sample, include_masks=include_masks),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        streams.append(steps.shuffle(shuffle_buffer, seed=seed + success).repeat())
    weights = [1.0 - positive_fraction, positive_fraction]
    return tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=seed)


def sim_batches(
    data_root: str | Path,
    episodes: Sequence[Summary],
    *,
    batch_size: int,
    positive_fraction: float = 0.5,
    seed: int = 0,
    shuffle_buffer: int = 1024,
) -> tf.data.Dataset:
    """Endless batches of simulated steps with masks: {x0, xt, x0_mask, mask, motion, label, domain}.

    Images are uint8 [B, H, W, 3], masks uint8 class ids [B, H, W].

    Raises:
        ValueError: no labeled successes or no labeled failures among the SIM episodes.
    """
    sim = [e for e in episodes if e.domain == SIM]
    stream = _labeled_stream(
        data_root,
        sim,
        SIM,
        positive_fraction=positive_fraction,
        include_masks=True,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
    )
    return (
        stream.map(_squeeze_masks, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def real_batches(
    data_root: str | Path,
    episodes: Sequence[Summary],
    *,
    batch_size: int,
    with_labels: bool,
    positive_fraction: float = 0.5,
    seed: int = 0,
    shuffle_buffer: int = 1024,
) -> tf.data.Dataset:
    """Endless batches of real steps: {x0, xt, motion}, plus {label, domain} `with_labels`.

    Without labels every REAL episode is used, labeled or not (the paper's
    Table II trains G on unlabeled real images). Every step carries its motion
    either way: the pose and final pose are recorded whatever the outcome, and
    a DANN head could tell the domains apart by a made-up real motion alone.

    Raises:
        ValueError: no REAL episodes, or (with labels) no labeled successes or failures.
    """
    real = [e for e in episodes if e.domain == REAL]
    if with_labels:
        stream = _labeled_stream(
            data_root,
            real,
            REAL,
            positive_fraction=positive_fraction,
            include_masks=False,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
        )
    else:
        if not real:
            raise ValueError("no REAL episodes: GraspGAN's discriminator needs real images")
        real = list(real)
        random.Random(seed).shuffle(real)
        stream = (
            dataset.step_dataset(data_root, real)
            .map(
                lambda s: {
                    X0: s[X0],
                    XT: s[XT],
                    MOTION: grasp_motion(s[dataset.POSE], s[dataset.FINAL_POSE]),
                },
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            .shuffle(shuffle_buffer, seed=seed)
            .repeat()
        )
    return stream.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def rcan_samples(data_root: str | Path, episodes: Sequence[Summary]) -> tf.data.Dataset:
    """(image, canonical, mask) triples of every step's xt, and of each episode's x0 once.

    Images uint8 [H, W, 3], mask uint8 [H, W].

    Raises:
        ValueError: no episodes, or several image sizes.
    """

    def triples(step: dict) -> tf.data.Dataset:
        # x0 is repeated in every step's sample; it is taken once, with the first step.
        count = tf.where(tf.equal(step[dataset.STEP], 0), 2, 1)
        return tf.data.Dataset.from_tensor_slices(
            {
                IMAGE: tf.stack([step[XT], step[X0]])[:count],
                CANONICAL: tf.stack([step[dataset.CANONICAL], step[dataset.X0_CANONICAL]])[:count],
                MASK: tf.stack([step[MASK][..., 0], step[X0_MASK][..., 0]])[:count],
            }
        )

    steps = dataset.step_dataset(data_root, episodes, include_masks=True, include_canonical=True)
    return steps.flat_map(triples)


def rcan_batches(
    data_root: str | Path,
    episodes: Sequence[Summary],
    *,
    batch_size: int,
    seed: int = 0,
    shuffle_buffer: int = 1024,
) -> tf.data.Dataset:
    """Endless shuffled batches of RCAN triples of SIM episodes (see `rcan_samples`).

    Raises:
        ValueError: no SIM episodes.
    """
    sim = [e for e in episodes if e.domain == SIM]
    if not sim:
        raise ValueError("no SIM episodes: RCAN learns from simulated canonical renders")
    random.Random(seed).shuffle(sim)
    return (
        rcan_samples(data_root, sim)
        .shuffle(shuffle_buffer, seed=seed)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def to_float(images: tf.Tensor) -> tf.Tensor:
    """uint8 pixels to the generator's float [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def to_pixels(images: tf.Tensor) -> tf.Tensor:
    """The generator's float [-1, 1] to float pixels [0, 255], differentiable.

    The grasp model normalizes with a cast that is the identity on float32, so
    refined images reach it through this with their gradient intact.
    """
    return (images + 1.0) * 127.5


def mask_batches(
    data_root: str | Path, episodes: Sequence[Summary], *, batch_size: int
) -> tf.data.Dataset:
    """Every step of the SIM `episodes` once, in order: {x0, xt, x0_mask, mask} (for evaluation)."""
    sim = [e for e in episodes if e.domain == SIM]
    if not sim:
        raise ValueError("no SIM episodes: masks come from the simulator")
    keys = (X0, XT, X0_MASK, MASK)
    return (
        dataset.step_dataset(data_root, sim, include_masks=True)
        .map(lambda s: _squeeze_masks({k: s[k] for k in keys}))
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def episode_counts(episodes: Sequence[Summary]) -> dict[str, int]:
    """Episodes and steps per domain (labeled or not), for a model's metadata."""
    counts: dict[str, int] = {}
    for name, domain in (("sim", SIM), ("real", REAL)):
        members = [e for e in episodes if e.domain == domain]
        counts[f"{name}_episodes"] = len(members)
        counts[f"{name}_steps"] = sum(e.num_steps for e in members)
        counts[f"{name}_labeled_episodes"] = len(selection.labeled(members))
    return counts
