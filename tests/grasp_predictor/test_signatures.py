"""The split signatures: image_features once, score_features per set of motions, same numbers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from models.grasp_success import export, profiles, samples
from models.grasp_success.model import ModelConfig, _ConvBlock, build_model
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server
from tests.fixtures.waiting import until


def _motions(rng: np.random.Generator, pairs: int, k: int) -> np.ndarray:
    angle = rng.uniform(-1.5, 1.5, (pairs, k))
    return np.concatenate(
        [rng.normal(0, 5, (pairs, k, 3)), np.sin(angle)[..., None], np.cos(angle)[..., None]],
        axis=-1,
    ).astype(np.float32)


def _images(rng: np.random.Generator, pairs: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        rng.integers(0, 256, (pairs, 64, 64, 3), dtype=np.uint8),
        rng.integers(0, 256, (pairs, 64, 64, 3), dtype=np.uint8),
    )


def _network(profile: str) -> object:
    """A network with random weights and batch-norm statistics, as if trained."""
    model = build_model(ModelConfig(profile=profile, dbn=True, dann=True))
    rng = np.random.default_rng(1)
    for variable in model.variables:
        if "temperature" in variable.path:
            continue  # the keypoint softmax's: near 0 it overflows
        if "variance" in variable.path:
            low, high = 0.5, 1.5
        elif "/motion/" in variable.path or "success_logit" in variable.path:
            low, high = -1.0, 1.0  # motions that make a difference
        else:
            low, high = -0.3, 0.3
        variable.assign(rng.uniform(low, high, variable.shape).astype(np.float32))
    return model


def _per_motion(model, x0: np.ndarray, xt: np.ndarray, motions: np.ndarray) -> np.ndarray:
    """P(success) the way training computes it: the images repeated for every motion."""
    pairs, k = motions.shape[:2]
    crop = model.profile.crop_size
    x0 = np.repeat(samples.center_crop(tf.constant(x0), crop).numpy(), k, axis=0)
    xt = np.repeat(samples.center_crop(tf.constant(xt), crop).numpy(), k, axis=0)
    domain = tf.fill([pairs * k], samples.REAL)
    features = model.image_features(x0, xt, domain)
    logits, _ = model.score(features, motions.reshape(-1, motions.shape[-1]), domain)
    return tf.sigmoid(logits).numpy().reshape(pairs, k)


@pytest.mark.parametrize("profile", ["default", "default-average"])
def test_feature_signatures_give_the_serving_default_numbers(tmp_path, profile):
    model = _network(profile)
    _, path = export.export_model(model, tmp_path)
    rng = np.random.default_rng(0)
    x0, xt = _images(rng, 3)
    motions = _motions(rng, 3, 65)
    signatures = tf.saved_model.load(str(path)).signatures
    assert {
        export.SIGNATURE_KEY,
        export.FEATURES_SIGNATURE,
        export.SCORE_FEATURES_SIGNATURE,
    } <= set(signatures)
    direct = signatures[export.SIGNATURE_KEY](
        x0=tf.constant(x0), xt=tf.constant(xt), motions=tf.constant(motions)
    )[export.OUTPUT_SUCCESS].numpy()
    features = signatures[export.FEATURES_SIGNATURE](x0=tf.constant(x0), xt=tf.constant(xt))[
        export.OUTPUT_FEATURES
    ]
    split = signatures[export.SCORE_FEATURES_SIGNATURE](
        features=features, motions=tf.constant(motions)
    )[export.OUTPUT_SUCCESS].numpy()
    np.testing.assert_allclose(split, direct, atol=1e-5)
    np.testing.assert_allclose(direct, _per_motion(model, x0, xt, motions), atol=1e-5)
    assert np.isfinite(direct).all()
    assert np.ptp(direct) > 0.01  # the motions get different scores: the tolerance means something
    # Scoring a subset of the motions against the same features gives their numbers again.
    again = signatures[export.SCORE_FEATURES_SIGNATURE](
        features=features[1:], motions=tf.constant(motions[1:, 10:20])
    )[export.OUTPUT_SUCCESS].numpy()
    np.testing.assert_allclose(again, direct[1:, 10:20], atol=1e-5)


@pytest.mark.parametrize(
    ("spec", "side"),
    [(profiles.ConvSpec(8, 3), 14), (profiles.ConvSpec(8, 5, stride=2, pool=2), 13)],
)
def test_offsets_through_a_conv_block_equal_adding_them_to_the_input(spec, side):
    block = _ConvBlock(spec, profiles.DEFAULT, dbn=False)
    rng = np.random.default_rng(2)
    features = tf.constant(rng.normal(size=(2, side, side, 6)).astype(np.float32))
    offsets = tf.constant(rng.normal(size=(2 * 3, 6)).astype(np.float32))
    domain = tf.fill([6], samples.REAL)
    block(features, tf.fill([2], samples.REAL))  # creates the variables
    block.norm.moving_mean.assign(rng.normal(size=block.norm.moving_mean.shape))
    expected = block(tf.repeat(features, 3, axis=0) + offsets[:, None, None, :], domain)
    np.testing.assert_allclose(
        block.call_with_offsets(features, offsets, domain).numpy(), expected.numpy(), atol=1e-5
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The version folder of an exported default network."""
    base = tmp_path_factory.mktemp("models")
    return export.export_model(build_model(ModelConfig(profile="default")), base)[1]


@pytest.fixture(scope="module")
def served(exported):
    server = create_server(
        PredictorConfig(
            port=0, model_base_path=str(exported.parent.parent), settle_s=0, max_batch_size=8
        )
    )
    with grpc.insecure_channel(server.address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    server.stop(grace_s=0)


def _request(signature: str, **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = export.DEFAULT_NAME
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        if isinstance(value, np.ndarray):
            value = tf.make_tensor_proto(value)
        request.inputs[name].CopyFrom(value)
    return request


def test_the_predictor_serves_the_split_over_grpc(served):
    rng = np.random.default_rng(3)
    x0, xt = _images(rng, 2)
    motions = _motions(rng, 2, 64)
    direct = served.Predict(
        _request(export.SIGNATURE_KEY, x0=x0, xt=xt, motions=motions), timeout=30
    )
    features = served.Predict(_request(export.FEATURES_SIGNATURE, x0=x0, xt=xt), timeout=30)
    assert set(features.outputs) == {export.OUTPUT_FEATURES}
    assert features.model_spec.version.value == 1
    scored = served.Predict(
        _request(
            export.SCORE_FEATURES_SIGNATURE,
            features=features.outputs[export.OUTPUT_FEATURES],
            motions=motions,
        ),
        timeout=30,
    )
    np.testing.assert_allclose(
        tf.make_ndarray(scored.outputs[export.OUTPUT_SUCCESS]),
        tf.make_ndarray(direct.outputs[export.OUTPUT_SUCCESS]),
        atol=1e-5,
    )
    metadata = served.GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": export.DEFAULT_NAME}, metadata_field=["signature_def"]
        ),
        timeout=10,
    )
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def[export.FEATURES_SIGNATURE].inputs) == {"x0", "xt"}
    assert set(signatures.signature_def[export.SCORE_FEATURES_SIGNATURE].inputs) == {
        "features",
        "motions",
    }


def test_the_warmup_records_are_one_valid_request_per_signature(exported, served):
    """TF Serving replays them before it serves the version: each must succeed."""
    records = tf.data.TFRecordDataset(str(exported / export.WARMUP_FILE))
    requests = [
        prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        for record in records
    ]
    assert sorted(r.model_spec.signature_name for r in requests) == sorted(
        [export.SIGNATURE_KEY, export.FEATURES_SIGNATURE, export.SCORE_FEATURES_SIGNATURE]
    )
    for request in requests:
        assert served.Predict(request, timeout=30).outputs


def test_bad_feature_requests_are_invalid_arguments(served):
    rng = np.random.default_rng(4)
    features = np.zeros((2, 14, 14, 32), np.float32)
    cases = [
        (dict(features=features, motions=_motions(rng, 3, 8)), "motions has 3 rows"),
        (dict(features=features[..., :16], motions=_motions(rng, 2, 8)), "shape"),
        (dict(features=features * np.nan, motions=_motions(rng, 2, 8)), "features contain NaN"),
        (dict(features=features, motions=_motions(rng, 2, 2000)), "at most 1024"),
    ]
    for inputs, fragment in cases:
        with pytest.raises(grpc.RpcError) as failed:
            served.Predict(_request(export.SCORE_FEATURES_SIGNATURE, **inputs), timeout=10)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fragment
        assert fragment in failed.value.details()


class _Disagreeing(tf.Module):
    """serving_default and a split of it that gives other numbers: a broken export."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="x0"),
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="xt"),
            tf.TensorSpec([None, None, 5], tf.float32, name="motions"),
        ]
    )
    def serve(self, x0, xt, motions):
        return {"success_probability": tf.sigmoid(motions[..., 0])}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="x0"),
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="xt"),
        ]
    )
    def features(self, x0, xt):
        return {"features": tf.zeros([tf.shape(x0)[0], 2, 2, 4])}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 4], tf.float32, name="features"),
            tf.TensorSpec([None, None, 5], tf.float32, name="motions"),
        ]
    )
    def score(self, features, motions):
        return {"success_probability": tf.sigmoid(motions[..., 0] + 0.5)}


def test_a_version_whose_split_disagrees_is_refused(tmp_path):
    module = _Disagreeing()
    path = tmp_path / export.DEFAULT_NAME / "1"
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            export.SIGNATURE_KEY: module.serve,
            export.FEATURES_SIGNATURE: module.features,
            export.SCORE_FEATURES_SIGNATURE: module.score,
        },
    )
    server = create_server(PredictorConfig(port=0, model_base_path=str(tmp_path), settle_s=0))
    try:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = export.DEFAULT_NAME
        with grpc.insecure_channel(server.address) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)

            def refused() -> str:
                statuses = stub.GetModelStatus(request, timeout=5).model_version_status
                return next((s.status.error_message for s in statuses if s.version == 1), "")

            assert until(refused, timeout_s=30)
            assert "disagree with 'serving_default'" in refused()
    finally:
        server.stop(grace_s=0)
