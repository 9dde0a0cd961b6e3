"""Episodes in the RLDS layout, as a TFDS dataset: the feature spec and one episode's example.

RLDS (Ramos et al. 2021) stores an episode as `steps` (a nested dataset) and
`episode_metadata`. A graspfleet episode maps onto it as:

- steps[t]: observation {image: x_t, pose: [x, y, z, yaw, gripper_closure]},
  action: the 5-D command [dx_cm, dy_cm, dz_cm, sin_dyaw, cos_dyaw],
  action_kind (move, close, raise), predicted_success (-1 when no model chose
  the command), reward (1 on the last step of a success, else 0), discount 1,
  is_first, is_last, is_terminal (the last step: the grasp ends the episode).
- episode_metadata: ids, robot, domain, randomization, policy, objects, seed,
  the model that drove it, x0, the grasp result and the label with its state
  and source (who set it: the robot's report or a person's relabel).

Images keep the store's JPEG or PNG bytes (raw pixels, which TFDS cannot hold,
are PNG-encoded). `tfds.builder_from_directory(OUT)` reads what `features()`
describes without any graspfleet code.
"""

from __future__ import annotations

import numpy as np

from graspfleet.v1 import common_pb2
from models.episodes.shards import command_vector, pose_vector
from robots.names import DOMAIN_NAMES, RANDOMIZATION_NAMES

DATASET_NAME = "graspfleet_episodes"
VERSION = "1.0.0"
ACTION_KINDS = {
    common_pb2.Command.KIND_MOVE: "move",
    common_pb2.Command.KIND_CLOSE: "close",
    common_pb2.Command.KIND_RAISE: "raise",
}
LABEL_STATES = {
    common_pb2.LABEL_STATE_UNLABELED: "unlabeled",
    common_pb2.LABEL_STATE_AUTO: "auto",
    common_pb2.LABEL_STATE_RELABELED: "relabeled",
}


def features(height: int | None, width: int | None):
    """The dataset's features; images of one size (height x width) or of any (None)."""
    import tensorflow_datasets as tfds

    image = tfds.features.Image(shape=(height, width, 3), dtype=np.uint8)
    text = tfds.features.Text()
    scalar = tfds.features.Scalar
    return tfds.features.FeaturesDict(
        {
            "steps": tfds.features.Dataset(
                {
                    "observation": {
                        "image": image,
                        "pose": tfds.features.Tensor(shape=(5,), dtype=np.float32),
                    },
                    "action": tfds.features.Tensor(shape=(5,), dtype=np.float32),
                    "action_kind": text,
                    "predicted_success": scalar(dtype=np.float32),
                    "reward": scalar(dtype=np.float32),
                    "discount": scalar(dtype=np.float32),
                    "is_first": scalar(dtype=np.bool_),
                    "is_last": scalar(dtype=np.bool_),
                    "is_terminal": scalar(dtype=np.bool_),
                }
            ),
            "episode_metadata": {
                "episode_id": text,
                "robot_id": text,
                "domain": text,
                "randomization": text,
                "policy": text,
                "object_set": text,
                "object_ids": tfds.features.Sequence(text),
                "collection_id": text,
                # The simulation seed's 64 bits, as a signed integer.
                "seed": scalar(dtype=np.int64),
                "model_name": text,
                "model_version": scalar(dtype=np.int64),
                "x0": image,
                "result": text,
                "success": scalar(dtype=np.bool_),
                "label_state": text,
                "label_source": text,
                "started_at_ns": scalar(dtype=np.int64),
            },
        }
    )


def example(
    header: common_pb2.EpisodeHeader,
    steps: list[common_pb2.Step],
    outcome: common_pb2.EpisodeOutcome,
    label: common_pb2.Label,
) -> dict:
    """One episode as the example `features()` encodes (image bytes kept as stored).

    Raises:
        ValueError: the episode has no step, or an image TFDS cannot hold.
    """
    if not steps:
        raise ValueError(f"episode {header.episode_id} has no step")
    success = outcome.result == common_pb2.GRASP_RESULT_SUCCESS
    last = len(steps) - 1
    seed = header.seed - (1 << 64) if header.seed >= 1 << 63 else header.seed
    return {
        "steps": [
            {
                "observation": {
                    "image": _encoded(step.image, header.episode_id),
                    "pose": np.asarray(pose_vector(step.pose), np.float32),
                },
                "action": np.asarray(command_vector(step.command), np.float32),
                "action_kind": ACTION_KINDS.get(step.command.kind, "unspecified"),
                "predicted_success": (
                    step.predicted_success if step.HasField("predicted_success") else -1.0
                ),
                "reward": 1.0 if success and t == last else 0.0,
                "discount": 1.0,
                "is_first": t == 0,
                "is_last": t == last,
                "is_terminal": t == last,
            }
            for t, step in enumerate(steps)
        ],
        "episode_metadata": {
            "episode_id": header.episode_id,
            "robot_id": header.robot_id,
            "domain": DOMAIN_NAMES.get(header.domain, "unspecified"),
            "randomization": RANDOMIZATION_NAMES.get(header.randomization, "none"),
            "policy": header.policy,
            "object_set": header.object_set,
            "object_ids": list(header.object_ids),
            "collection_id": header.collection_id,
            "seed": seed,
            "model_name": header.model.name,
            "model_version": header.model.version,
            "x0": _encoded(header.x0, header.episode_id),
            "result": common_pb2.GraspResult.Name(outcome.result)
            .removeprefix("GRASP_RESULT_")
            .lower(),
            "success": bool(label.success),
            "label_state": LABEL_STATES.get(label.state, "unlabeled"),
            "label_source": label.source,
            "started_at_ns": header.started_at.ToNanoseconds(),
        },
    }


def _encoded(image: common_pb2.Image, episode_id: str) -> bytes:
    """The image's JPEG or PNG bytes as stored; raw pixels PNG-encoded."""
    if image.encoding in (common_pb2.Image.ENCODING_JPEG, common_pb2.Image.ENCODING_PNG):
        return image.data
    if image.encoding == common_pb2.Image.ENCODING_RAW and image.channels == 3:
        import tensorflow as tf

        pixels = np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 3)
        return tf.io.encode_png(pixels).numpy()
    raise ValueError(
        f"episode {episode_id}: an image of encoding "
        f"{common_pb2.Image.Encoding.Name(image.encoding)} with {image.channels} channels "
        "cannot be exported (RGB JPEG, PNG or raw pixels only)"
    )
