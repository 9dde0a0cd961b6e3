"""Training data straight from the shards: a `tf.data` pipeline of per-step samples.

Each step of each episode becomes one sample (the paper's "T steps give T
samples"): x0, xt, the end-effector pose, the executed command, the final grasp
pose (so v = final pose - current pose can be formed), the episode's current
label (relabels included: labels come from the metadata, not the shard) and its
domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes.selection import is_evaluation
from models.episodes.shards import Keys

# Sample keys, declared once.
X0 = "x0"
XT = "xt"
X0_MASK = "x0_mask"
MASK = "mask"
X0_CANONICAL = "x0_canonical"
CANONICAL = "canonical"
POSE = "pose"
FINAL_POSE = "final_pose"
COMMAND = "command"
COMMAND_KIND = "command_kind"
LABEL = "label"
LABELED = "labeled"
DOMAIN = "domain"
EPISODE_ID = "episode_id"
STEP = "step"
IS_LAST = "is_last"

_CONTEXT = {
    Keys.X0: tf.io.FixedLenFeature([], tf.string),
    Keys.X0_ENCODING: tf.io.FixedLenFeature([], tf.int64),
    Keys.X0_MASK: tf.io.FixedLenFeature([], tf.string),
    Keys.X0_MASK_ENCODING: tf.io.FixedLenFeature([], tf.int64),
    Keys.X0_CANONICAL: tf.io.FixedLenFeature([], tf.string),
    Keys.X0_CANONICAL_ENCODING: tf.io.FixedLenFeature([], tf.int64),
    Keys.FINAL_POSE: tf.io.FixedLenFeature([5], tf.float32),
}
_SEQUENCE = {
    Keys.IMAGE: tf.io.FixedLenSequenceFeature([], tf.string),
    Keys.IMAGE_ENCODING: tf.io.FixedLenSequenceFeature([], tf.int64),
    Keys.MASK: tf.io.FixedLenSequenceFeature([], tf.string),
    Keys.MASK_ENCODING: tf.io.FixedLenSequenceFeature([], tf.int64),
    Keys.CANONICAL: tf.io.FixedLenSequenceFeature([], tf.string),
    Keys.CANONICAL_ENCODING: tf.io.FixedLenSequenceFeature([], tf.int64),
    Keys.POSE: tf.io.FixedLenSequenceFeature([5], tf.float32),
    Keys.COMMAND: tf.io.FixedLenSequenceFeature([5], tf.float32),
    Keys.COMMAND_KIND: tf.io.FixedLenSequenceFeature([], tf.int64),
    Keys.IS_LAST: tf.io.FixedLenSequenceFeature([], tf.int64),
}


def decode_image(
    data: tf.Tensor, encoding: tf.Tensor, height: int, width: int, channels: int
) -> tf.Tensor:
    """Decodes RAW, PNG or JPEG bytes to uint8 [height, width, channels]."""
    branches = {
        common_pb2.Image.ENCODING_RAW: lambda: tf.reshape(
            tf.io.decode_raw(data, tf.uint8), [height, width, channels]
        ),
        common_pb2.Image.ENCODING_PNG: lambda: tf.io.decode_png(data, channels=channels),
        common_pb2.Image.ENCODING_JPEG: lambda: tf.io.decode_jpeg(data, channels=channels),
    }
    image = tf.switch_case(tf.cast(encoding, tf.int32) - 1, [branches[k] for k in sorted(branches)])
    return tf.ensure_shape(image, [height, width, channels])


def image_size(episodes: Sequence[episode_store_pb2.EpisodeSummary]) -> tuple[int, int]:
    """The one (height, width) that all `episodes` share.

    Raises:
        ValueError: no episodes, or episodes of different image sizes.
    """
    if not episodes:
        raise ValueError("no episodes to read: the selection matched nothing")
    sizes = {(e.image_size.height, e.image_size.width) for e in episodes}
    if len(sizes) != 1:
        raise ValueError(f"episodes have several image sizes (h, w) {sorted(sizes)}; select one")
    ((height, width),) = sizes
    return height, width


def step_dataset(
    data_root: str | Path,
    episodes: Sequence[episode_store_pb2.EpisodeSummary],
    *,
    include_masks: bool = False,
    include_canonical: bool = False,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Per-step samples of `episodes`, in their order, read from their shards.

    Args:
        data_root: The store's data folder (holding `shards/`).
        episodes: Summaries from ListEpisodes; all must share one image size.
        include_masks: Also yield `x0_mask` and `mask` ([H, W, 1] class ids);
            only for episodes collected with them (`render_masks`, simulated
            ones); reading one without them fails.
        include_canonical: Also yield `x0_canonical` and `canonical` ([H, W, 3]
            RCAN canonical images); only for episodes collected with them
            (`render_canonical`); reading one without them fails.
        num_parallel_calls: Parallelism of shard reads and image decoding.

    Raises:
        ValueError: no episodes, episodes of different image sizes, or an
            evaluation episode (they are never read as training data).
    """
    scoring = [e.episode_id for e in episodes if is_evaluation(e)]
    if scoring:
        raise ValueError(
            f"{len(scoring)} evaluation episodes (e.g. {scoring[0]}) were given as training "
            "data; evaluation episodes score models and are never learned from"
        )
    height, width = image_size(episodes)
    root = Path(data_root)
    index = tf.data.Dataset.from_tensor_slices(
        {
            "path": [str(root / e.shard) for e in episodes],
            LABEL: [float(e.label.success) for e in episodes],
            LABELED: [e.label.state != common_pb2.LABEL_STATE_UNLABELED for e in episodes],
            DOMAIN: [int(e.domain) for e in episodes],
            EPISODE_ID: [e.episode_id for e in episodes],
        }
    )

    def episode_steps(entry: dict) -> tf.data.Dataset:
        records = tf.data.TFRecordDataset(entry["path"])
        return records.flat_map(lambda serialized: _steps_of(serialized, entry))

    def _steps_of(serialized: tf.Tensor, entry: dict) -> tf.data.Dataset:
        context, sequence = tf.io.parse_single_sequence_example(
            serialized, context_features=_CONTEXT, sequence_features=_SEQUENCE
        )
        count = tf.shape(sequence[Keys.IMAGE])[0]

        def repeat(value: tf.Tensor) -> tf.Tensor:
            return tf.repeat(tf.expand_dims(value, 0), count, axis=0)

        steps = {
            "x0_data": repeat(context[Keys.X0]),
            "x0_encoding": repeat(context[Keys.X0_ENCODING]),
            "image_data": sequence[Keys.IMAGE],
            "image_encoding": sequence[Keys.IMAGE_ENCODING],
            POSE: sequence[Keys.POSE],
            FINAL_POSE: repeat(context[Keys.FINAL_POSE]),
            COMMAND: sequence[Keys.COMMAND],
            COMMAND_KIND: tf.cast(sequence[Keys.COMMAND_KIND], tf.int32),
            IS_LAST: tf.cast(sequence[Keys.IS_LAST], tf.bool),
            STEP: tf.range(count, dtype=tf.int32),
            LABEL: repeat(entry[LABEL]),
            LABELED: repeat(entry[LABELED]),
            DOMAIN: repeat(tf.cast(entry[DOMAIN], tf.int32)),
            EPISODE_ID: repeat(entry[EPISODE_ID]),
        }
        if include_masks:
            steps["x0_mask_data"] = repeat(context[Keys.X0_MASK])
            steps["x0_mask_encoding"] = repeat(context[Keys.X0_MASK_ENCODING])
            steps["mask_data"] = sequence[Keys.MASK]
            steps["mask_encoding"] = sequence[Keys.MASK_ENCODING]
        if include_canonical:
            steps["x0_canonical_data"] = repeat(context[Keys.X0_CANONICAL])
            steps["x0_canonical_encoding"] = repeat(context[Keys.X0_CANONICAL_ENCODING])
            steps["canonical_data"] = sequence[Keys.CANONICAL]
            steps["canonical_encoding"] = sequence[Keys.CANONICAL_ENCODING]
        return tf.data.Dataset.from_tensor_slices(steps)

    def decode(step: dict) -> dict:
        sample = dict(step)
        sample[X0] = decode_image(
            sample.pop("x0_data"), sample.pop("x0_encoding"), height, width, 3
        )
        sample[XT] = decode_image(
            sample.pop("image_data"), sample.pop("image_encoding"), height, width, 3
        )
        if include_masks:
            for key in (X0_MASK, MASK):
                missing = "has no masks; collect with render_masks to train on them"
                sample[key] = decode_image(*stored(sample, key, missing), height, width, 1)
        if include_canonical:
            for key in (X0_CANONICAL, CANONICAL):
                missing = "has no canonical images; collect with render_canonical to train on them"
                sample[key] = decode_image(*stored(sample, key, missing), height, width, 3)
        return sample

    def stored(sample: dict, key: str, missing: str) -> tuple[tf.Tensor, tf.Tensor]:
        """`key`'s bytes and encoding, popped from `sample`.

        An episode collected without that image stores none (encoding 0): the
        read fails naming the episode and `missing`, not with "bad JPEG".
        """
        encoding = sample.pop(f"{key}_encoding")
        present = tf.debugging.Assert(encoding > 0, ["episode", sample[EPISODE_ID], missing])
        with tf.control_dependencies([present]):
            return tf.identity(sample.pop(f"{key}_data")), encoding

    steps = index.interleave(
        episode_steps, cycle_length=4, num_parallel_calls=num_parallel_calls, deterministic=True
    )
    return steps.map(decode, num_parallel_calls=num_parallel_calls, deterministic=True)
