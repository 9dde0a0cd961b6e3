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
are PNG-encoded); poses and actions are float32, as RLDS datasets hold them
(TFDS stores float64 as float32 anyway): an import gets the store's doubles
back rounded to float32, well under a micrometre. Segmentation
masks and canonical renders (simulation's training aids) are not exported.
`record()` reads an example back into the episode the store ingests. `tfds.builder_from_directory(OUT)` reads what `features()`
describes without any graspfleet code.
"""

from __future__ import annotations

import json

import numpy as np

from graspfleet.v1 import common_pb2
from models.episodes.shards import EpisodeRecord, command_vector, pose_vector
from robots.names import DOMAIN_NAMES, DOMAIN_VALUES, RANDOMIZATION_NAMES, RANDOMIZATION_VALUES

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
                    # The model whose prediction chose the command ("" and 0: exploration).
                    "model_name": text,
                    "model_version": scalar(dtype=np.int64),
                    "time_ns": scalar(dtype=np.int64),
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
                # The header's attributes (purpose=evaluation, the collection plan) as JSON.
                "attributes": text,
                # The simulation seed's 64 bits, as a signed integer.
                "seed": scalar(dtype=np.int64),
                "model_name": text,
                "model_version": scalar(dtype=np.int64),
                "x0": image,
                "result": text,
                # Where the gripper closed: v = final_pose - pose at each step.
                "final_pose": tfds.features.Tensor(shape=(5,), dtype=np.float32),
                "outcome_detail": text,
                "success": scalar(dtype=np.bool_),
                "label_state": text,
                "label_source": text,
                "label_reason": text,
                "started_at_ns": scalar(dtype=np.int64),
                "ended_at_ns": scalar(dtype=np.int64),
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
                "model_name": step.model.name,
                "model_version": step.model.version,
                "time_ns": step.time.ToNanoseconds(),
            }
            for t, step in enumerate(steps)
        ],
        "episode_metadata": {
            "episode_id": header.episode_id,
            "robot_id": header.robot_id,
            "domain": DOMAIN_NAMES.get(header.domain, "unspecified"),
            "randomization": RANDOMIZATION_NAMES.get(header.randomization, "unspecified"),
            "policy": header.policy,
            "object_set": header.object_set,
            "object_ids": list(header.object_ids),
            "collection_id": header.collection_id,
            "attributes": json.dumps(dict(header.attributes), sort_keys=True),
            "seed": seed,
            "model_name": header.model.name,
            "model_version": header.model.version,
            "x0": _encoded(header.x0, header.episode_id),
            "result": common_pb2.GraspResult.Name(outcome.result)
            .removeprefix("GRASP_RESULT_")
            .lower(),
            "final_pose": np.asarray(pose_vector(outcome.final_pose), np.float32),
            "outcome_detail": outcome.detail,
            "success": bool(label.success),
            "label_state": LABEL_STATES.get(label.state, "unlabeled"),
            "label_source": label.source,
            "label_reason": label.reason,
            "started_at_ns": header.started_at.ToNanoseconds(),
            "ended_at_ns": outcome.ended_at.ToNanoseconds(),
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


def record(example: dict) -> tuple[EpisodeRecord, common_pb2.Label]:
    """An example read back as the episode to ingest, with the label it carried.

    The example's images are bytes, as `tfds.decode.SkipDecoding` gives them.

    Raises:
        ValueError: a value the store cannot hold (the message names the field).
    """
    meta = example["episode_metadata"]
    episode_id = _text(meta["episode_id"])
    header = common_pb2.EpisodeHeader(
        episode_id=episode_id,
        robot_id=_text(meta["robot_id"]),
        domain=_named(DOMAINS, meta["domain"], f"{episode_id}: episode_metadata/domain"),
        randomization=_named(
            RANDOMIZATIONS, meta["randomization"], f"{episode_id}: episode_metadata/randomization"
        ),
        policy=_text(meta["policy"]),
        object_ids=[_text(o) for o in meta["object_ids"]],
        object_set=_text(meta["object_set"]),
        seed=int(meta["seed"]) % (1 << 64),
        collection_id=_text(meta["collection_id"]),
        x0=_image(meta["x0"], f"{episode_id}: episode_metadata/x0"),
        attributes=_attributes(meta["attributes"], f"{episode_id}: episode_metadata/attributes"),
    )
    if _text(meta["model_name"]):
        header.model.CopyFrom(
            common_pb2.ModelRef(name=_text(meta["model_name"]), version=int(meta["model_version"]))
        )
    header.started_at.FromNanoseconds(int(meta["started_at_ns"]))
    kinds = {name: kind for kind, name in ACTION_KINDS.items()}
    steps = []
    for t, step in enumerate(example["steps"]):
        where = f"{episode_id}: steps[{t}]"
        message = common_pb2.Step(
            index=t,
            image=_image(step["observation"]["image"], f"{where}/observation/image"),
            pose=_pose(step["observation"]["pose"]),
            command=common_pb2.Command(
                kind=_named(kinds, step["action_kind"], f"{where}/action_kind"),
                motion=common_pb2.MotionCommand(
                    **dict(zip(MOTION_FIELDS, map(float, step["action"]), strict=True))
                ),
            ),
        )
        if float(step["predicted_success"]) >= 0:
            message.predicted_success = float(step["predicted_success"])
        if _text(step["model_name"]):
            message.model.CopyFrom(
                common_pb2.ModelRef(
                    name=_text(step["model_name"]), version=int(step["model_version"])
                )
            )
        if int(step["time_ns"]):
            message.time.FromNanoseconds(int(step["time_ns"]))
        steps.append(message)
    results = {
        common_pb2.GraspResult.Name(v).removeprefix("GRASP_RESULT_").lower(): v
        for v in common_pb2.GraspResult.values()
    }
    outcome = common_pb2.EpisodeOutcome(
        result=_named(results, meta["result"], f"{episode_id}: episode_metadata/result"),
        final_pose=_pose(meta["final_pose"]),
        num_steps=len(steps),
        detail=_text(meta["outcome_detail"]),
    )
    if int(meta["ended_at_ns"]):
        outcome.ended_at.FromNanoseconds(int(meta["ended_at_ns"]))
    states = {name: state for state, name in LABEL_STATES.items()}
    label = common_pb2.Label(
        state=_named(states, meta["label_state"], f"{episode_id}: episode_metadata/label_state"),
        success=bool(meta["success"]),
        source=_text(meta["label_source"]),
        reason=_text(meta["label_reason"]),
    )
    return EpisodeRecord(header, tuple(steps), outcome), label


MOTION_FIELDS = ("dx_cm", "dy_cm", "dz_cm", "sin_dyaw", "cos_dyaw")
# Names as exported: the protos' enums, "unspecified" for 0.
DOMAINS = {**DOMAIN_VALUES, "unspecified": 0}
RANDOMIZATIONS = {**RANDOMIZATION_VALUES, "unspecified": 0}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _named(names: dict, value, field: str) -> int:
    name = _text(value)
    if name not in names:
        raise ValueError(f"{field}={name!r}: use one of {sorted(names)}")
    return names[name]


def _attributes(value, field: str) -> dict[str, str]:
    try:
        attributes = json.loads(_text(value) or "{}")
    except json.JSONDecodeError:
        raise ValueError(f"{field}: not a JSON object") from None
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise ValueError(f"{field}: a JSON object of strings to strings, please")
    return attributes


def _pose(vector) -> common_pb2.Pose:
    x, y, z, yaw, closure = (float(v) for v in vector)
    return common_pb2.Pose(
        position_m=common_pb2.Vec3(x=x, y=y, z=z), yaw_rad=yaw, gripper_closure=closure
    )


def _image(data: bytes, field: str) -> common_pb2.Image:
    """Encoded bytes as the store's Image: PNG or JPEG, its size read from its header."""
    import io

    from PIL import Image

    encodings = {"PNG": common_pb2.Image.ENCODING_PNG, "JPEG": common_pb2.Image.ENCODING_JPEG}
    try:
        with Image.open(io.BytesIO(data)) as image:
            encoding, (width, height), mode = encodings.get(image.format), image.size, image.mode
    except (OSError, ValueError):
        raise ValueError(f"{field}: not a PNG or JPEG image") from None
    if encoding is None or mode != "RGB":
        raise ValueError(f"{field}: a {mode} image; the store takes RGB PNG or JPEG")
    return common_pb2.Image(encoding=encoding, width=width, height=height, channels=3, data=data)
