"""Episode shards: one RLDS-style tf.train.SequenceExample a file, written atomically.

Layout (format version 1). Context features are the episode's metadata; feature
lists are its steps, in RLDS terms (is_first / is_last / is_terminal,
observation, action, reward, discount). Images keep the bytes the robot sent,
with their encoding beside them, so a read returns them byte for byte. The
serialized protos (without pixels) ride along so GetEpisode can rebuild the
messages exactly; training reads only the tensors.

A shard is written to a staging file, fsynced, then renamed into place, so a
crash never leaves a half-written shard under its final name. Its name carries
the episode's digest, so two different episodes sent under one id can never
overwrite each other. A shard the store cannot index is moved to `quarantine/`
with the reason beside it, never deleted.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from graspfleet.v1 import common_pb2
from services.common.files import fsync_dir, replace_durably, write_atomically

FORMAT_VERSION = 1
SHARD_SUFFIX = ".tfrecord"
REASON_SUFFIX = ".reason"

# Episodes run to score a model carry this header attribute; they are never training data.
PURPOSE = "purpose"
EVALUATION = "evaluation"
# A collected episode carries its collection plan's fingerprint: a resumed collection
# runs only what the store lacks, and only when what it holds came from the same plan.
COLLECTION_PLAN = "collection_plan"


class Keys:
    """Feature keys of the shard format, declared once."""

    FORMAT_VERSION = "format_version"
    # Episode metadata (context).
    EPISODE_ID = "episode_metadata/episode_id"
    ROBOT_ID = "episode_metadata/robot_id"
    DOMAIN = "episode_metadata/domain"
    RANDOMIZATION = "episode_metadata/randomization"
    SEED = "episode_metadata/seed"
    OBJECT_IDS = "episode_metadata/object_ids"
    IMAGE_HEIGHT = "episode_metadata/image_height"
    IMAGE_WIDTH = "episode_metadata/image_width"
    RESULT = "episode_metadata/result"
    FINAL_POSE = "episode_metadata/final_pose"
    X0 = "episode_metadata/x0/image"
    X0_ENCODING = "episode_metadata/x0/encoding"
    X0_MASK = "episode_metadata/x0/mask"
    X0_MASK_ENCODING = "episode_metadata/x0/mask_encoding"
    X0_CANONICAL = "episode_metadata/x0/canonical"
    X0_CANONICAL_ENCODING = "episode_metadata/x0/canonical_encoding"
    HEADER_PROTO = "episode_metadata/header_proto"
    OUTCOME_PROTO = "episode_metadata/outcome_proto"
    # Steps (feature lists).
    IS_FIRST = "steps/is_first"
    IS_LAST = "steps/is_last"
    IS_TERMINAL = "steps/is_terminal"
    IMAGE = "steps/observation/image"
    IMAGE_ENCODING = "steps/observation/image_encoding"
    MASK = "steps/observation/mask"
    MASK_ENCODING = "steps/observation/mask_encoding"
    CANONICAL = "steps/observation/canonical"
    CANONICAL_ENCODING = "steps/observation/canonical_encoding"
    POSE = "steps/observation/pose"
    COMMAND = "steps/action/command"
    COMMAND_KIND = "steps/action/kind"
    REWARD = "steps/reward"
    DISCOUNT = "steps/discount"
    STEP_PROTO = "steps/step_proto"


@dataclass(frozen=True)
class EpisodeRecord:
    """One whole episode as it arrived."""

    header: common_pb2.EpisodeHeader
    steps: tuple[common_pb2.Step, ...]
    outcome: common_pb2.EpisodeOutcome


def pose_vector(pose: common_pb2.Pose) -> list[float]:
    """[x, y, z, yaw, gripper_closure] in metres and radians."""
    p = pose.position_m
    return [p.x, p.y, p.z, pose.yaw_rad, pose.gripper_closure]


def command_vector(command: common_pb2.Command) -> list[float]:
    """The 5-D motion [dx_cm, dy_cm, dz_cm, sin_dyaw, cos_dyaw]."""
    m = command.motion
    return [m.dx_cm, m.dy_cm, m.dz_cm, m.sin_dyaw, m.cos_dyaw]


def _without_pixels(message, *fields: str):
    copy = type(message)()
    copy.CopyFrom(message)
    for name in fields:
        copy.ClearField(name)
    return copy


def encode(record: EpisodeRecord) -> bytes:
    """Serializes an episode to one SequenceExample."""
    import tensorflow as tf  # heavy; loaded only by the processes that touch shards

    def ints(*values: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def floats(values: list[float]) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def raw(*values: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    header, outcome, steps = record.header, record.outcome, record.steps
    success = outcome.result == common_pb2.GRASP_RESULT_SUCCESS
    context = {
        Keys.FORMAT_VERSION: ints(FORMAT_VERSION),
        Keys.EPISODE_ID: raw(header.episode_id.encode()),
        Keys.ROBOT_ID: raw(header.robot_id.encode()),
        Keys.DOMAIN: ints(header.domain),
        Keys.RANDOMIZATION: ints(header.randomization),
        # The seed is a uint64; int64 features hold its bit pattern.
        Keys.SEED: ints(header.seed - (1 << 64) if header.seed >= 1 << 63 else header.seed),
        Keys.OBJECT_IDS: raw(*(o.encode() for o in header.object_ids)),
        Keys.IMAGE_HEIGHT: ints(header.x0.height),
        Keys.IMAGE_WIDTH: ints(header.x0.width),
        Keys.RESULT: ints(outcome.result),
        Keys.FINAL_POSE: floats(pose_vector(outcome.final_pose)),
        Keys.X0: raw(header.x0.data),
        Keys.X0_ENCODING: ints(header.x0.encoding),
        Keys.X0_MASK: raw(header.x0_mask.data),
        Keys.X0_MASK_ENCODING: ints(header.x0_mask.encoding),
        Keys.X0_CANONICAL: raw(header.x0_canonical.data),
        Keys.X0_CANONICAL_ENCODING: ints(header.x0_canonical.encoding),
        Keys.HEADER_PROTO: raw(
            _without_pixels(header, "x0", "x0_mask", "x0_canonical").SerializeToString(
                deterministic=True
            )
        ),
        Keys.OUTCOME_PROTO: raw(outcome.SerializeToString(deterministic=True)),
    }
    last = len(steps) - 1

    def per_step(make) -> tf.train.FeatureList:
        return tf.train.FeatureList(feature=[make(i, s) for i, s in enumerate(steps)])

    lists = {
        Keys.IS_FIRST: per_step(lambda i, s: ints(int(i == 0))),
        Keys.IS_LAST: per_step(lambda i, s: ints(int(i == last))),
        Keys.IS_TERMINAL: per_step(lambda i, s: ints(int(i == last))),
        Keys.IMAGE: per_step(lambda i, s: raw(s.image.data)),
        Keys.IMAGE_ENCODING: per_step(lambda i, s: ints(s.image.encoding)),
        Keys.MASK: per_step(lambda i, s: raw(s.mask.data)),
        Keys.MASK_ENCODING: per_step(lambda i, s: ints(s.mask.encoding)),
        Keys.CANONICAL: per_step(lambda i, s: raw(s.canonical.data)),
        Keys.CANONICAL_ENCODING: per_step(lambda i, s: ints(s.canonical.encoding)),
        Keys.POSE: per_step(lambda i, s: floats(pose_vector(s.pose))),
        Keys.COMMAND: per_step(lambda i, s: floats(command_vector(s.command))),
        Keys.COMMAND_KIND: per_step(lambda i, s: ints(s.command.kind)),
        Keys.REWARD: per_step(lambda i, s: floats([float(success and i == last)])),
        Keys.DISCOUNT: per_step(lambda i, s: floats([1.0])),
        Keys.STEP_PROTO: per_step(
            lambda i, s: raw(
                _without_pixels(s, "image", "mask", "canonical").SerializeToString(
                    deterministic=True
                )
            )
        ),
    }
    example = tf.train.SequenceExample(
        context=tf.train.Features(feature=context),
        feature_lists=tf.train.FeatureLists(feature_list=lists),
    )
    return example.SerializeToString()


def _image(data: bytes, encoding: int, like: common_pb2.Image, channels: int) -> common_pb2.Image:
    if not data:
        return common_pb2.Image()
    return common_pb2.Image(
        encoding=encoding, width=like.width, height=like.height, channels=channels, data=data
    )


def decode(serialized: bytes) -> EpisodeRecord:
    """Rebuilds the episode's messages, pixels included, from a shard record."""
    import tensorflow as tf

    example = tf.train.SequenceExample.FromString(serialized)
    ctx = example.context.feature
    version = ctx[Keys.FORMAT_VERSION].int64_list.value[0]
    if version != FORMAT_VERSION:
        raise ValueError(f"shard format version {version}; this reader knows {FORMAT_VERSION}")

    def one_bytes(feature) -> bytes:
        return feature.bytes_list.value[0]

    def one_int(feature) -> int:
        return feature.int64_list.value[0]

    header = common_pb2.EpisodeHeader.FromString(one_bytes(ctx[Keys.HEADER_PROTO]))
    size = common_pb2.Image(
        width=one_int(ctx[Keys.IMAGE_WIDTH]), height=one_int(ctx[Keys.IMAGE_HEIGHT])
    )
    header.x0.CopyFrom(_image(one_bytes(ctx[Keys.X0]), one_int(ctx[Keys.X0_ENCODING]), size, 3))
    header.x0_mask.CopyFrom(
        _image(one_bytes(ctx[Keys.X0_MASK]), one_int(ctx[Keys.X0_MASK_ENCODING]), size, 1)
    )
    header.x0_canonical.CopyFrom(
        _image(one_bytes(ctx[Keys.X0_CANONICAL]), one_int(ctx[Keys.X0_CANONICAL_ENCODING]), size, 3)
    )
    if not header.x0_mask.data:
        header.ClearField("x0_mask")
    if not header.x0_canonical.data:
        header.ClearField("x0_canonical")
    outcome = common_pb2.EpisodeOutcome.FromString(one_bytes(ctx[Keys.OUTCOME_PROTO]))
    lists = example.feature_lists.feature_list
    steps = []
    for i, proto in enumerate(lists[Keys.STEP_PROTO].feature):
        step = common_pb2.Step.FromString(one_bytes(proto))
        for field, key, enc_key, channels in (
            ("image", Keys.IMAGE, Keys.IMAGE_ENCODING, 3),
            ("mask", Keys.MASK, Keys.MASK_ENCODING, 1),
            ("canonical", Keys.CANONICAL, Keys.CANONICAL_ENCODING, 3),
        ):
            data = one_bytes(lists[key].feature[i])
            if data:
                getattr(step, field).CopyFrom(
                    _image(data, one_int(lists[enc_key].feature[i]), size, channels)
                )
        steps.append(step)
    return EpisodeRecord(header=header, steps=tuple(steps), outcome=outcome)


def warm_up() -> None:
    """Loads TensorFlow now, so the first ingest after SERVING is not the one that pays for it."""
    import tensorflow  # noqa: F401


class ShardDirectory:
    """The folder of shard files under a store's data root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shards = root / "shards"
        self.staging = root / "staging"
        self.quarantined = root / "quarantine"
        self.shards.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def relative_path(self, episode_id: str, digest: str, robot_id: str) -> str:
        """Where an episode's shard goes, relative to the data root."""
        safe_robot = "".join(c if c.isalnum() or c in "-_." else "_" for c in robot_id)
        if safe_robot.strip(".") == "":
            # ".", ".." (or nothing) would put the shard beside or above shards/, where
            # neither the sweep nor rebuild-index looks.
            safe_robot = "_" * max(1, len(safe_robot))
        return f"shards/{safe_robot}/{episode_id}.{digest[:16]}{SHARD_SUFFIX}"

    def write(self, relative: str, payload: bytes) -> int:
        """Writes one record durably under `relative`; returns the file's size in bytes."""
        import tensorflow as tf

        final = self.root / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.staging / f"{uuid.uuid4().hex}.tmp"
        try:
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                writer.write(payload)
            replace_durably(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final.stat().st_size

    def read(self, relative: str) -> EpisodeRecord:
        """Reads the episode stored under `relative`."""
        import tensorflow as tf

        records = list(tf.data.TFRecordDataset(str(self.root / relative)).as_numpy_iterator())
        if len(records) != 1:
            raise ValueError(f"{relative}: expected 1 record, found {len(records)}")
        return decode(records[0])

    def remove(self, relative: str) -> None:
        """Deletes the shard at `relative`; nothing happens when it is gone already."""
        (self.root / relative).unlink(missing_ok=True)

    def quarantine(self, relative: str, reason: str) -> Path | None:
        """Moves a shard from `shards/` to `quarantine/`, with `reason` in a file beside it.

        Nothing reads `quarantine/`: the shard waits there for a person to inspect it, move
        it back (then `graspfleet store rebuild-index`) or delete it.

        Args:
            relative: The shard, relative to the data root (`shards/...`).
            reason: Why it cannot be indexed, for the person who finds it.

        Returns:
            Where the shard is now, or None when it was gone already (another replica
            quarantined it first).
        """
        source = self.root / relative
        target = self.quarantined / Path(relative).relative_to("shards")
        target.parent.mkdir(parents=True, exist_ok=True)
        # A shard quarantined before under the same name keeps its place and its reason.
        base, n = target, 0
        while target.exists() or target.with_name(target.name + REASON_SUFFIX).exists():
            n += 1
            target = base.with_name(f"{base.name}.{n}")
        # The reason goes first: a crash in between leaves a reason without a shard, never a
        # quarantined shard without its reason.
        write_atomically(target.with_name(target.name + REASON_SUFFIX), reason + "\n")
        try:
            os.replace(source, target)
        except FileNotFoundError:
            target.with_name(target.name + REASON_SUFFIX).unlink(missing_ok=True)
            return None
        fsync_dir(target.parent)
        fsync_dir(source.parent)
        return target

    def files(self) -> list[tuple[str, float]]:
        """Every shard file as (relative path, modification time)."""
        return [
            (str(p.relative_to(self.root)), p.stat().st_mtime)
            for p in self.shards.rglob(f"*{SHARD_SUFFIX}")
        ]

    def staging_files(self) -> list[tuple[Path, float]]:
        """Every file in the staging folder as (path, modification time)."""
        return [(p, p.stat().st_mtime) for p in self.staging.iterdir()]
