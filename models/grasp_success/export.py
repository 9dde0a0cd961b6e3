"""Publishing a trained grasp-success model as a SavedModel version that TF Serving can serve.

A version is written in full under `<model_base>/<name>/.tmp-<uuid>/` (a name
TF Serving and our predictor ignore, since it is not an integer), fsynced, and
renamed to `<model_base>/<name>/<version>/` in one step, so no reader ever sees
half a version. Beside the SavedModel: `graspfleet_model.json` (recipe, data,
validation metrics, sizes), `assets.extra/tf_serving_warmup_requests`, one
CEM-sized request per signature that TF Serving replays before it reports the
version available, and `assets.extra/grasp_success.weights.h5`, the training
weights a fine-tuning run starts from.

Signatures: `serving_default` (x0, xt, motions → success_probability) scores
motions for image pairs in one call. A client that scores several sets of
motions for the same images (the planner: CEM's iterations) calls
`image_features` (x0, xt → features) once and `score_features` (features,
motions → success_probability) per set, so the image trunk runs once; the
features are opaque, valid only for the version that computed them.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict
from pathlib import Path

import tensorflow as tf

from models.grasp_success.model import MOTION_DIM, GraspSuccessModel
from models.grasp_success.samples import REAL, center_crop
from models.grasp_success.tensors import (
    DEFAULT_SIGNATURE,
    FEATURES_SIGNATURE,
    SCORE_FEATURES_SIGNATURE,
)
from models.registry import FORMAT_VERSION, METADATA_FILE, TRAINING_WEIGHTS_FILE, publish_staged

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
# The network's training weights (the scene head's too, which serving leaves out): what a
# run that starts from this version (RunSpec.start_from) loads. TF Serving ignores the file.
WEIGHTS_FILE = Path(TRAINING_WEIGHTS_FILE)
DEFAULT_NAME = "grasp_success"

# The serving signatures, declared once: clients and the predictor import these.
SIGNATURE_KEY = DEFAULT_SIGNATURE
INPUT_X0 = "x0"
INPUT_XT = "xt"
INPUT_MOTIONS = "motions"
INPUT_FEATURES = "features"
OUTPUT_FEATURES = "features"
OUTPUT_SUCCESS = "success_probability"
WARMUP_MOTIONS = 64  # the CEM population of Levine et al.

_IMAGE_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8)
_MOTIONS_SPEC = tf.TensorSpec([None, None, MOTION_DIM], tf.float32, name=INPUT_MOTIONS)


class ServingModule(tf.Module):
    """The serving signatures around a trained model: raw images in, P(success) per motion out."""

    def __init__(self, model: GraspSuccessModel) -> None:
        super().__init__()
        self.model = model
        self.crop_size = model.profile.crop_size
        self.feature_channels = model.profile.trunk[-1].filters

    def signatures(self) -> dict:
        """Signature key → concrete function, for `tf.saved_model.save`."""
        return {
            SIGNATURE_KEY: self.serve,
            FEATURES_SIGNATURE: self.image_features,
            SCORE_FEATURES_SIGNATURE: self.score_features.get_concrete_function(
                tf.TensorSpec(
                    [None, None, None, self.feature_channels], tf.float32, name=INPUT_FEATURES
                ),
                _MOTIONS_SPEC,
            ),
        }

    @tf.function(
        input_signature=[
            tf.TensorSpec.from_spec(_IMAGE_SPEC, name=INPUT_X0),
            tf.TensorSpec.from_spec(_IMAGE_SPEC, name=INPUT_XT),
            _MOTIONS_SPEC,
        ]
    )
    def serve(self, x0: tf.Tensor, xt: tf.Tensor, motions: tf.Tensor) -> dict[str, tf.Tensor]:
        """P(success) [B, K] for K motions per (x0, xt) pair of episode-size uint8 images."""
        with tf.control_dependencies(_same_pairs(x0, xt) + _one_row_per_pair(motions, x0)):
            probability = self.model.success_probability(
                center_crop(x0, self.crop_size), center_crop(xt, self.crop_size), motions
            )
        return {OUTPUT_SUCCESS: probability}

    @tf.function(
        input_signature=[
            tf.TensorSpec.from_spec(_IMAGE_SPEC, name=INPUT_X0),
            tf.TensorSpec.from_spec(_IMAGE_SPEC, name=INPUT_XT),
        ]
    )
    def image_features(self, x0: tf.Tensor, xt: tf.Tensor) -> dict[str, tf.Tensor]:
        """C1's features [B, h, w, c] of (x0, xt) pairs, for `score_features`."""
        with tf.control_dependencies(_same_pairs(x0, xt)):
            crop_x0, crop_xt = center_crop(x0, self.crop_size), center_crop(xt, self.crop_size)
            domain = tf.fill([tf.shape(x0)[0]], REAL)
            features = self.model.image_features(crop_x0, crop_xt, domain, training=False)
        return {OUTPUT_FEATURES: features}

    @tf.function
    def score_features(self, features: tf.Tensor, motions: tf.Tensor) -> dict[str, tf.Tensor]:
        """P(success) [B, K] for K motions per row of `image_features` output."""
        with tf.control_dependencies(_one_row_per_pair(motions, features)):
            probability = self.model.score_features(features, motions)
        return {OUTPUT_SUCCESS: probability}


def _same_pairs(x0: tf.Tensor, xt: tf.Tensor) -> list:
    check = tf.debugging.assert_equal(
        tf.shape(x0), tf.shape(xt), message="x0 and xt must have the same shape"
    )
    return [check] if check is not None else []


def _one_row_per_pair(motions: tf.Tensor, pairs: tf.Tensor) -> list:
    check = tf.debugging.assert_equal(
        tf.shape(motions)[0],
        tf.shape(pairs)[0],
        message="motions must have one row of K motions per image pair",
    )
    return [check] if check is not None else []


def _warmup_records(module: ServingModule, name: str, height: int, width: int) -> list[bytes]:
    """One CEM-sized request per signature, as PredictionLog records."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    image = tf.zeros([1, height, width, 3], tf.uint8)
    motions = tf.zeros([1, WARMUP_MOTIONS, MOTION_DIM])
    features = module.image_features(image, image)[OUTPUT_FEATURES]
    requests = {
        SIGNATURE_KEY: {INPUT_X0: image, INPUT_XT: image, INPUT_MOTIONS: motions},
        FEATURES_SIGNATURE: {INPUT_X0: image, INPUT_XT: image},
        SCORE_FEATURES_SIGNATURE: {INPUT_FEATURES: features, INPUT_MOTIONS: motions},
    }
    records = []
    for signature, inputs in requests.items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=name, signature_name=signature),
            inputs={key: tf.make_tensor_proto(value) for key, value in inputs.items()},
        )
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log.SerializeToString())
    return records


def export_model(
    model: GraspSuccessModel,
    model_base: str | Path,
    name: str = DEFAULT_NAME,
    metadata: dict | None = None,
    *,
    image_size: tuple[int, int] | None = None,
) -> tuple[int, Path]:
    """Publishes `model` as the next integer version of `<model_base>/<name>/`.

    Args:
        model: A trained (built) grasp-success model.
        model_base: The model repository (TF Serving's --model_base_path is `<model_base>/<name>`).
        name: Model name (a folder under model_base).
        metadata: JSON-serializable facts for `graspfleet_model.json` (recipe, data,
            validation metrics, ...); must not reuse the keys this function writes.
        image_size: (height, width) of the episode images clients send; the
            profile's by default. Used for the warmup request and recorded.

    Returns:
        (version, path of the version folder).

    Raises:
        ValueError: metadata reuses a reserved key.
        TypeError: metadata is not JSON-serializable.
    """
    height, width = image_size or (model.profile.image_height, model.profile.image_width)
    record = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "profile": model.profile.name,
        "model": asdict(model.model_config),
        "image_size": {"height": height, "width": width},
        "crop_size": model.profile.crop_size,
        "signature": {
            "key": SIGNATURE_KEY,
            "inputs": {
                INPUT_X0: "uint8 [B, H, W, 3]",
                INPUT_XT: "uint8 [B, H, W, 3]",
                INPUT_MOTIONS: f"float32 [B, K, {MOTION_DIM}]",
            },
            "outputs": {OUTPUT_SUCCESS: "float32 [B, K]"},
        },
    }
    clashes = sorted(set(record) & set(metadata or {}))
    if clashes:
        raise ValueError(f"metadata keys {clashes} are reserved by export_model")
    text = json.dumps({**record, **(metadata or {})}, indent=2, sort_keys=True)

    def write(staging: Path) -> None:
        module = ServingModule(model)
        tf.saved_model.save(module, str(staging), signatures=module.signatures())
        (staging / METADATA_FILE).write_text(text + "\n")
        (staging / WARMUP_FILE).parent.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(staging / WARMUP_FILE)) as writer:
            for serialized in _warmup_records(module, name, height, width):
                writer.write(serialized)
        model.save_weights(str(staging / WEIGHTS_FILE))

    model_dir = Path(model_base) / name
    version = publish_staged(model_dir, write)
    return version, model_dir / str(version)


def training_weights(version_dir: str | Path) -> Path:
    """The training weights file of a published version, for a run that starts from it.

    Raises:
        FileNotFoundError: the version was published without them (before versions
            carried them); the message says what to do.
    """
    path = Path(version_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{version_dir} holds no {WEIGHTS_FILE}: it was published before versions carried "
            "their training weights; start from a version published since, or from none"
        )
    return path
