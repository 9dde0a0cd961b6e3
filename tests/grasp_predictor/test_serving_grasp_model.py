"""The real grasp-success network, exported and served: the stock TF Serving client gets its numbers."""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from models.grasp_success import export, samples
from models.grasp_success.model import ModelConfig, build_model
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server


def test_exported_network_serves_the_same_numbers(tmp_path):
    model = build_model(ModelConfig(profile="default", dbn=True, dann=True))
    version, path = export.export_model(model, tmp_path, metadata={"recipe": "test"})
    assert version == 1
    rng = np.random.default_rng(0)
    x0 = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    xt = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    angle = rng.uniform(-1.5, 1.5, (2, 64))
    motions = np.concatenate(
        [rng.normal(0, 5, (2, 64, 3)), np.sin(angle)[..., None], np.cos(angle)[..., None]], axis=-1
    ).astype(np.float32)
    crop = model.profile.crop_size
    in_process = model.success_probability(
        samples.center_crop(tf.constant(x0), crop),
        samples.center_crop(tf.constant(xt), crop),
        tf.constant(motions),
    ).numpy()
    loaded = tf.saved_model.load(str(path)).signatures["serving_default"]
    from_saved_model = loaded(x0=tf.constant(x0), xt=tf.constant(xt), motions=tf.constant(motions))
    np.testing.assert_allclose(
        from_saved_model["success_probability"].numpy(), in_process, atol=1e-5
    )

    server = create_server(PredictorConfig(port=0, model_base_path=str(tmp_path), settle_s=0))
    try:
        with grpc.insecure_channel(server.address) as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "grasp_success"
            for name, value in (("x0", x0), ("xt", xt), ("motions", motions)):
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=30
            )
        served = tf.make_ndarray(response.outputs["success_probability"])
        assert served.shape == (2, 64) and response.model_spec.version.value == 1
        np.testing.assert_allclose(served, in_process, atol=1e-5)
    finally:
        server.stop(grace_s=0)
