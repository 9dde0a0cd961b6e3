"""The grasp predictor through the stock TensorFlow Serving client: predictions, versions, errors."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server
from tests.fixtures import models

SIZE = models.IMAGE_SIZE


@pytest.fixture
def base(tmp_path):
    return tmp_path / "models"


def _server(base, **overrides):
    config = dict(
        port=0,
        model_base_path=str(base),
        poll_interval_s=0.2,
        settle_s=0.0,
        metrics_port=0,
        grace_s=1.0,
    )
    config.update(overrides)
    return create_server(PredictorConfig(**config))


@pytest.fixture
def predictor(base):
    models.publish(base, 1, bias=0.0)
    server = _server(base)
    yield server
    server.stop(grace_s=0)


@pytest.fixture
def stub(predictor):
    with grpc.insecure_channel(predictor.address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _inputs(pairs: int = 1, motions: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    x0 = rng.integers(0, 256, (pairs, SIZE, SIZE, 3), dtype=np.uint8)
    xt = rng.integers(0, 256, (pairs, SIZE, SIZE, 3), dtype=np.uint8)
    v = rng.normal(0, 3, (pairs, motions, 5)).astype(np.float32)
    return x0, xt, v


def _request(x0, xt, v, version=None, label=None, name="grasp_success"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["x0"].CopyFrom(tf.make_tensor_proto(x0))
    request.inputs["xt"].CopyFrom(tf.make_tensor_proto(xt))
    request.inputs["motions"].CopyFrom(tf.make_tensor_proto(v))
    return request


def test_stock_client_gets_correct_predictions(stub):
    x0, xt, v = _inputs(pairs=2, motions=64)
    response = stub.Predict(_request(x0, xt, v), timeout=10)
    got = tf.make_ndarray(response.outputs["success_probability"])
    assert got.shape == (2, 64)
    np.testing.assert_allclose(got, models.expected(0.0, x0, xt, v), rtol=1e-5, atol=1e-6)
    assert response.model_spec.version.value == 1
    # By label: with no labels file, "stable" is the newest version.
    by_label = stub.Predict(_request(x0, xt, v, label="stable"), timeout=10)
    assert by_label.model_spec.version.value == 1


def test_metadata_and_status(predictor, stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "grasp_success"
    response = stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    serving = signatures.signature_def["serving_default"]
    assert set(serving.inputs) == {"x0", "xt", "motions"}
    assert set(serving.outputs) == {"success_probability"}
    with grpc.insecure_channel(predictor.address) as channel:
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "grasp_success"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            status_request, timeout=10
        )
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ]


def _health(address):
    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(), timeout=5)
            .status
        )


def _wait(predicate, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except grpc.RpcError:
            pass  # not there yet
        time.sleep(0.05)
    return False


def test_not_serving_until_a_version_loads(base):
    server = _server(base)
    try:
        assert _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        models.publish(base, 1, bias=0.5)
        assert _wait(lambda: _health(server.address) == health_pb2.HealthCheckResponse.SERVING)
    finally:
        server.stop(grace_s=0)


def test_new_version_under_load_then_a_corrupt_one(predictor, base):
    """4 clients call Predict throughout; v2 takes over within seconds; a corrupt v3 is refused."""
    x0, xt, v = _inputs()
    expected = {1: models.expected(0.0, x0, xt, v), 2: models.expected(1.0, x0, xt, v)}
    stop = threading.Event()
    seen: list[tuple[float, int]] = []
    failures: list[Exception] = []

    def client():
        with grpc.insecure_channel(predictor.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    response = stub.Predict(_request(x0, xt, v), timeout=10)
                    version = response.model_spec.version.value
                    got = tf.make_ndarray(response.outputs["success_probability"])
                    np.testing.assert_allclose(got, expected[version], rtol=1e-5, atol=1e-6)
                    seen.append((time.monotonic(), version))
                except Exception as err:  # noqa: BLE001 - every failure is a test failure
                    failures.append(err)

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(client)
        assert _wait(lambda: len(seen) > 20)
        published = time.monotonic()
        models.publish(base, 2, bias=1.0)
        assert _wait(lambda: seen and seen[-1][1] == 2), "version 2 never answered"
        switched = next(t for t, version in seen if version == 2 and t > published)
        models.publish_corrupt(base, 3)
        with grpc.insecure_channel(predictor.address) as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "grasp_success"
            status_stub = model_service_pb2_grpc.ModelServiceStub(channel)

            def refused():
                statuses = status_stub.GetModelStatus(request, timeout=5).model_version_status
                return any(s.version == 3 and s.status.error_message for s in statuses)

            assert _wait(refused), "version 3 was never refused"
        # Keep the clients going a while: v2 must go on answering with v3 refused.
        assert _wait(
            lambda: seen[-1][0] > max(switched + 1.5, time.monotonic() - 0.1) and len(seen) > 50
        )
        stop.set()
    assert not failures, failures[:3]
    assert switched - published < 5.0
    after = [version for t, version in seen if t > switched + 1.0]
    assert after and set(after) == {2}


def test_half_copied_folder_is_not_served_until_complete(predictor, base, stub):
    source = models.publish(base, 2, bias=1.0)
    assert _wait(
        lambda: stub.Predict(_request(*_inputs()), timeout=5).model_spec.version.value == 2
    )
    models.copy_slowly(source, base / "grasp_success" / "5")
    time.sleep(1.0)
    assert stub.Predict(_request(*_inputs()), timeout=5).model_spec.version.value == 2
    shutil.copy2(source / "saved_model.pb", base / "grasp_success" / "5" / "saved_model.pb")
    assert _wait(
        lambda: stub.Predict(_request(*_inputs()), timeout=5).model_spec.version.value == 5
    )


def test_labels_file_selects_versions(predictor, base, stub):
    models.publish(base, 2, bias=1.0)
    (base / "grasp_success" / "labels.json").write_text('{"stable": 1, "canary": 2}')
    assert _wait(
        lambda: (
            stub.Predict(_request(*_inputs(), label="canary"), timeout=5).model_spec.version.value
            == 2
        )
    )
    assert (
        stub.Predict(_request(*_inputs(), label="stable"), timeout=5).model_spec.version.value == 1
    )
    assert stub.Predict(_request(*_inputs(), version=1), timeout=5).model_spec.version.value == 1


BAD = {
    "unknown model": (
        lambda r: setattr(r.model_spec, "name", "nope"),
        grpc.StatusCode.NOT_FOUND,
        "not served here",
    ),
    "unknown version": (
        lambda r: r.model_spec.version.__setattr__("value", 9),
        grpc.StatusCode.NOT_FOUND,
        "version 9",
    ),
    "unknown label": (
        lambda r: setattr(r.model_spec, "version_label", "gold"),
        grpc.StatusCode.NOT_FOUND,
        "'gold'",
    ),
    "unknown signature": (
        lambda r: setattr(r.model_spec, "signature_name", "classify"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no signature",
    ),
    "wrong input name": (
        lambda r: r.inputs["image"].CopyFrom(r.inputs.pop("xt")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "takes inputs",
    ),
    "wrong dtype": (
        lambda r: r.inputs["x0"].CopyFrom(
            tf.make_tensor_proto(np.zeros((1, SIZE, SIZE, 3), np.float32))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dtype float32",
    ),
    "wrong rank": (
        lambda r: r.inputs["motions"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 5), np.float32))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape [1, 5]",
    ),
    "motion of 4 numbers": (
        lambda r: r.inputs["motions"].CopyFrom(
            tf.make_tensor_proto(np.zeros((1, 8, 4), np.float32))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape [1, 8, 4]",
    ),
    "rows disagree": (
        lambda r: r.inputs["motions"].CopyFrom(
            tf.make_tensor_proto(np.zeros((3, 8, 5), np.float32))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "one row of motions per image pair",
    ),
    "oversized batch": (
        lambda r: [
            r.inputs[k].CopyFrom(tf.make_tensor_proto(np.zeros(s, d)))
            for k, s, d in (
                ("x0", (33, SIZE, SIZE, 3), np.uint8),
                ("xt", (33, SIZE, SIZE, 3), np.uint8),
                ("motions", (33, 4, 5), np.float32),
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most 32",
    ),
    "a few bytes declaring gigabytes": (
        lambda r: r.inputs["x0"].CopyFrom(_declared_only((4, 2048, 2048, 3))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "declares shape [4, 2048, 2048, 3]",
    ),
    "a negative dimension": (
        lambda r: r.inputs["xt"].CopyFrom(_declared_only((1, -5, 3, 3))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "negative dimension",
    ),
    "NaN motion": (
        lambda r: r.inputs["motions"].CopyFrom(
            tf.make_tensor_proto(np.full((1, 8, 5), np.nan, np.float32))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN",
    ),
}


def _declared_only(shape: tuple[int, ...]):
    """A uint8 TensorProto declaring `shape` and carrying one value (the decoder repeats it)."""
    proto = tf.make_tensor_proto(np.zeros((1,), np.uint8))
    proto.tensor_shape.Clear()
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_the_right_status(case, stub):
    change, code, fragment = BAD[case]
    request = _request(*_inputs(motions=8))
    change(request)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(request, timeout=10)
    assert refused.value.code() == code, refused.value.details()
    assert fragment in refused.value.details()
    # Still serving afterwards.
    assert stub.Predict(_request(*_inputs(motions=8)), timeout=10).model_spec.version.value == 1


def test_concurrent_requests_are_batched(predictor, stub):
    x0, xt, v = _inputs(motions=16)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: stub.Predict(_request(x0, xt, v), timeout=10), range(64)))
    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{predictor.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    count = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith('graspfleet_predictor_batch_rows_count{model="grasp_success"}')
        )
    )
    total = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith('graspfleet_predictor_batch_rows_sum{model="grasp_success"}')
        )
    )
    assert total / count > 1.0, "no two requests were ever merged"


def test_mixed_shapes_under_load_are_all_answered(predictor, stub):
    """Requests of different shapes wait in the same queue; each gets its own rows back."""
    requests = [_inputs(motions=8 + (i % 3), seed=i) for i in range(48)]
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda r: stub.Predict(_request(*r), timeout=20), requests))
    for (x0, xt, v), response in zip(requests, responses, strict=True):
        got = tf.make_ndarray(response.outputs["success_probability"])
        np.testing.assert_allclose(got, models.expected(0.0, x0, xt, v), rtol=1e-5, atol=1e-6)


def test_full_queue_is_resource_exhausted(base):
    models.publish(base, 1, bias=0.0)
    server = _server(base, max_queue=2, batch_timeout_ms=300.0)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            # Different K per request: none can join another's batch, so the queue fills.
            requests = [_request(*_inputs(motions=k + 1)) for k in range(12)]
            with ThreadPoolExecutor(12) as pool:
                futures = [pool.submit(stub.Predict, r, timeout=10) for r in requests]
            codes = []
            for future in futures:
                try:
                    future.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert grpc.StatusCode.OK in codes
    finally:
        server.stop(grace_s=0)
