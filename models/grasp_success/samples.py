"""Training samples for the grasp-success model: (x0, xt, v, label, domain) from the episode store.

Every step of every labeled episode is one sample (the paper: "T time steps
result in T distinct training samples"), labeled with the success of the whole
episode. v is the motion from the current end-effector pose to the final grasp
pose: translation in cm and the vertical rotation as sine and cosine. Training
batches are drawn from (domain, label) buckets in fixed proportions, so a
"half of each batch is simulated" regime holds whatever the data's mix.
Validation episodes are split off by object, so validation measures grasping
objects the model never saw.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import dataset, selection
from models.episodes.dataset import DOMAIN, LABEL, MASK, X0, X0_MASK, XT

SIM = common_pb2.DOMAIN_SIM
REAL = common_pb2.DOMAIN_REAL
DOMAIN_NAMES = {SIM: "sim", REAL: "real"}

# Sample keys, declared once (the image, label and domain keys are the store's).
MOTION = "motion"
SAMPLE_KEYS = (X0, XT, MOTION, LABEL, DOMAIN)

Bucket = tuple[int, bool]  # (domain, success)


def grasp_motion(pose: tf.Tensor, final_pose: tf.Tensor) -> tf.Tensor:
    """The motion v = final grasp pose - current pose, as the network's 5-D motion.

    Args:
        pose: [..., 5] current (x, y, z in metres, yaw in radians, closure).
        final_pose: [..., 5] the pose where the gripper closed, same layout.

    Returns:
        [..., 5] float32 (dx, dy, dz in cm, sin(dyaw), cos(dyaw)).
    """
    pose = tf.convert_to_tensor(pose, tf.float32)
    final_pose = tf.convert_to_tensor(final_pose, tf.float32)
    translation_cm = (final_pose[..., :3] - pose[..., :3]) * 100.0
    dyaw = final_pose[..., 3:4] - pose[..., 3:4]
    return tf.concat([translation_cm, tf.sin(dyaw), tf.cos(dyaw)], axis=-1)


def center_crop(images: tf.Tensor, size: int) -> tf.Tensor:
    """The centred size x size window of [..., H, W, C] images of any H, W >= size."""
    shape = tf.shape(images)
    height, width = shape[-3], shape[-2]
    check = tf.debugging.assert_greater_equal(
        tf.minimum(height, width), size, message=f"images are smaller than the {size}px crop"
    )
    # In a graph the check must run before the slice, or the shape error comes first.
    with tf.control_dependencies([check] if check is not None else []):
        top, left = (height - size) // 2, (width - size) // 2
        cropped = images[..., top : top + size, left : left + size, :]
    return tf.ensure_shape(
        cropped, images.shape[:-3].concatenate([size, size]).concatenate(images.shape[-1:])
    )


def random_crop_together(images: list[tf.Tensor], size: int, seed: tf.Tensor) -> list[tf.Tensor]:
    """One random size x size window, the same for every [H, W, C] image of `images`."""
    channels = [int(image.shape[-1]) for image in images]
    stacked = tf.concat(images, axis=-1)
    cropped = tf.image.stateless_random_crop(stacked, [size, size, sum(channels)], seed=seed)
    return tf.split(cropped, channels, axis=-1)


def step_samples(
    data_root: str | Path,
    episodes: Sequence[episode_store_pb2.EpisodeSummary],
    include_masks: bool = False,
) -> tf.data.Dataset:
    """Uncropped samples {x0, xt, motion, label, domain} of every step of `episodes`.

    With `include_masks`, also the segmentation masks of x0 and xt (x0_mask,
    mask: [H, W, 1] class ids), which simulated episodes carry.

    Raises:
        ValueError: an episode is unlabeled or of neither domain, or none is given.
    """
    for episode in episodes:
        if episode.label.state == common_pb2.LABEL_STATE_UNLABELED:
            raise ValueError(f"episode {episode.episode_id} is unlabeled; select labeled ones")
        if episode.domain not in DOMAIN_NAMES:
            raise ValueError(f"episode {episode.episode_id} has no domain (SIM or REAL)")

    return dataset.step_dataset(data_root, episodes, include_masks=include_masks).map(
        functools.partial(step_sample, include_masks=include_masks),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def step_sample(step: dict, include_masks: bool = False) -> dict:
    """One stored step as a grasp sample {x0, xt, motion, label, domain} (+ masks if asked).

    The motion is the paper's v: from the step's pose to the episode's final pose.
    """
    sample = {
        X0: step[X0],
        XT: step[XT],
        MOTION: grasp_motion(step[dataset.POSE], step[dataset.FINAL_POSE]),
        LABEL: step[LABEL],
        DOMAIN: step[DOMAIN],
    }
    if include_masks:
        sample[X0_MASK], sample[MASK] = step[X0_MASK], step[MASK]
    return sample


def with_blank_masks(sample: dict) -> dict:
    """`sample` with background-only x0_mask and mask, the shape of its images."""
    blank = tf.zeros_like(sample[X0][..., :1])  # x0 and xt share one size
    return {**sample, X0_MASK: blank, MASK: blank}


def bucket_name(bucket: Bucket) -> str:
    """'sim/success', 'real/failure', ... as used in errors and model metadata."""
    domain, success = bucket
    return f"{DOMAIN_NAMES[domain]}/{'success' if success else 'failure'}"


def split_buckets(
    episodes: Sequence[episode_store_pb2.EpisodeSummary],
) -> dict[Bucket, list[episode_store_pb2.EpisodeSummary]]:
    """Labeled episodes by (domain, success); every bucket present, maybe empty."""
    buckets: dict[Bucket, list] = {(d, s): [] for d in DOMAIN_NAMES for s in (False, True)}
    for episode in selection.labeled(episodes):
        if episode.domain in DOMAIN_NAMES:
            buckets[(episode.domain, episode.label.success)].append(episode)
    return buckets


def bucket_weights(sim_fraction: float, positive_fraction: float) -> dict[Bucket, float]:
    """The share of each (domain, success) bucket in a batch."""
    domain_share = {SIM: sim_fraction, REAL: 1.0 - sim_fraction}
    label_share = {True: positive_fraction, False: 1.0 - positive_fraction}
    return {(d, s): domain_share[d] * label_share[s] for d in DOMAIN_NAMES for s in (False, True)}


def balanced_batches(
    data_root: str | Path,
    episodes: Sequence[episode_store_pb2.EpisodeSummary],
    *,
    batch_size: int,
    crop_size: int,
    sim_fraction: float,
    positive_fraction: float = 0.5,
    seed: int = 0,
    shuffle_buffer: int = 1024,
    include_masks: bool = False,
) -> tf.data.Dataset:
    """Endless training batches, each sample drawn from a (domain, label) bucket by weight.

    Buckets of weight 0 (e.g. SIM when sim_fraction is 0) are left out. x0 and
    xt (and, with `include_masks`, their masks) get the same random crop.
    Deterministic given `seed`.

    Args:
        data_root: The store's data folder.
        episodes: Training episodes; unlabeled ones are skipped.
        batch_size: Samples per batch.
        crop_size: Side of the random square crop.
        sim_fraction: Expected share of SIM samples in a batch.
        positive_fraction: Expected share of successful samples within each domain.
        seed: Seeds the episode order, shuffling, bucket draws and crops.
        shuffle_buffer: Steps shuffled together within a bucket.
        include_masks: Also yield x0_mask and mask: SIM episodes' own (every one
            must have masks), all background for REAL samples, which carry none
            (the scene loss counts SIM samples only).

    Raises:
        ValueError: a bucket with a positive weight has no episodes.
    """
    weights = bucket_weights(sim_fraction, positive_fraction)
    buckets = split_buckets(episodes)
    order = random.Random(seed)
    datasets, shares = [], []
    for index, (bucket, weight) in enumerate(sorted(weights.items())):
        if weight <= 0:
            continue
        members = list(buckets[bucket])
        if not members:
            raise ValueError(
                f"no labeled {bucket_name(bucket)} episodes in the training data, but "
                f"sim_fraction={sim_fraction} and positive_fraction={positive_fraction} give "
                f"that bucket {weight:.0%} of every batch; add such episodes or change the recipe"
            )
        order.shuffle(members)
        samples = step_samples(data_root, members, include_masks and bucket[0] == SIM)
        if include_masks and bucket[0] != SIM:
            samples = samples.map(with_blank_masks, num_parallel_calls=tf.data.AUTOTUNE)
        datasets.append(samples.shuffle(shuffle_buffer, seed=seed + index).repeat())
        shares.append(weight)
    mixed = tf.data.Dataset.sample_from_datasets(datasets, weights=shares, seed=seed)

    def crop(index: tf.Tensor, sample: dict) -> dict:
        crop_seed = tf.stack([tf.constant(seed, tf.int64), index])
        keys = [X0, XT, X0_MASK, MASK] if include_masks else [X0, XT]
        cropped = random_crop_together([sample[k] for k in keys], crop_size, crop_seed)
        return {**sample, **dict(zip(keys, cropped, strict=True))}

    return (
        mixed.enumerate()
        .map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def validation_batches(
    data_root: str | Path,
    episodes: Sequence[episode_store_pb2.EpisodeSummary],
    *,
    batch_size: int,
    crop_size: int,
) -> tf.data.Dataset:
    """Every step of the labeled `episodes` once, centre-cropped, in order."""
    samples = step_samples(data_root, selection.labeled(episodes))
    return (
        samples.map(
            lambda s: {**s, X0: center_crop(s[X0], crop_size), XT: center_crop(s[XT], crop_size)},
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def data_counts(episodes: Sequence[episode_store_pb2.EpisodeSummary]) -> dict[str, dict]:
    """Episodes and steps per bucket, for a model's metadata."""
    return {
        bucket_name(bucket): {
            "episodes": len(members),
            "steps": sum(e.num_steps for e in members),
        }
        for bucket, members in sorted(split_buckets(episodes).items())
    }
