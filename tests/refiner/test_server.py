"""The refiner service over real gRPC with real exported generators: answers, versions, refusals."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from graspfleet.v1 import common_pb2, refiner_pb2
from models.generators import export
from services.common.images import decode_image, encode_image
from services.refiner import client
from services.refiner.config import RefinerConfig
from services.refiner.server import create_server
from tests.fixtures import refiner_models
from tests.fixtures.images import damaged_png

GRASPGAN, RCAN = refiner_pb2.REFINER_MODE_GRASPGAN, refiner_pb2.REFINER_MODE_RCAN
RAW, PNG = common_pb2.Image.ENCODING_RAW, common_pb2.Image.ENCODING_PNG
SERVING = health_pb2.HealthCheckResponse.SERVING
Code = grpc.StatusCode


def _server(base, **overrides):
    config = dict(port=0, model_base_path=str(base), poll_interval_s=0.2, settle_s=0.0, grace_s=1.0)
    config.update(overrides)
    return create_server(RefinerConfig(**config))


def _images(count: int, height: int = 40, width: int = 33, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _request(images, mode=GRASPGAN, encoding=PNG, **fields) -> refiner_pb2.RefineRequest:
    return refiner_pb2.RefineRequest(
        mode=mode, images=[encode_image(i, encoding) for i in images], **fields
    )


def _pixels(response) -> np.ndarray:
    return np.stack([decode_image(i) for i in response.images])


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest()
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def _until(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except grpc.RpcError:
            pass  # not yet
        time.sleep(0.05)
    return False


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _close(got: np.ndarray, want: np.ndarray) -> None:
    # float32 in the model against float64 here: at most one grey level apart.
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_both_modes_refine_a_batch_to_its_own_size_with_masks(tmp_path):
    base = tmp_path / "models"
    refiner_models.publish(base, export.KIND_GRASPGAN, shift=0.5, mask_class=3)
    refiner_models.publish(base, export.KIND_RCAN, shift=-0.5, mask_class=1)
    before = _metric("graspfleet_refiner_images_total", mode="graspgan", version="1")
    server = _server(base)
    try:
        assert _health(server.address) == SERVING
        channel, stub = client.connect(server.address)
        with channel:
            images = _images(3)  # 40x33: not the training size, not a power of two
            answer = stub.Refine(_request(images, return_masks=True), timeout=10)
            assert (answer.model.name, answer.model.version) == ("graspgan", 1)
            assert answer.images[0].encoding == RAW
            _close(_pixels(answer), refiner_models.expected(images, 0.5))
            masks = np.stack([decode_image(m) for m in answer.masks])
            assert masks.shape == images.shape[:3] and set(np.unique(masks)) == {3}
            png = stub.Refine(_request(images[:2], RCAN, output_encoding=PNG), timeout=10)
            assert png.images[0].encoding == PNG and not png.masks
            refined = client.refine(stub, list(images[:2]), "rcan", return_masks=True)
        assert (refined.model.name, refined.model.version) == ("rcan", 1)
        np.testing.assert_array_equal(np.stack(refined.images), _pixels(png))
        _close(np.stack(refined.images), refiner_models.expected(images[:2], -0.5))
        assert all(set(np.unique(m)) == {1} for m in refined.masks)
    finally:
        server.stop(grace_s=0)
    after = _metric("graspfleet_refiner_images_total", mode="graspgan", version="1")
    assert after - before == 3
    assert _metric("graspfleet_refiner_refine_seconds_count", mode="rcan", version="1") >= 2


def test_new_versions_are_picked_up_and_broken_ones_refused(tmp_path):
    base = tmp_path / "models"
    server = _server(base)
    try:
        assert _health(server.address) != SERVING  # nothing to serve yet
        channel, stub = client.connect(server.address)
        with channel:
            images = _images(2, 24, 24)

            def version(**fields) -> int:
                return stub.Refine(_request(images, RCAN, **fields), timeout=10).model.version

            with pytest.raises(grpc.RpcError) as err:
                version()
            assert err.value.code() == Code.UNAVAILABLE
            assert "no rcan model is loaded yet" in err.value.details()

            refiner_models.publish(base, export.KIND_RCAN, shift=0.0)
            assert _until(lambda: _health(server.address) == SERVING)
            assert version() == 1
            assert _metric(
                "graspfleet_refiner_loaded_versions", mode="rcan", model="rcan", version="1"
            )
            refiner_models.publish(base, export.KIND_RCAN, shift=1.0)
            assert _until(lambda: version() == 2)
            answer = stub.Refine(_request(images, RCAN), timeout=10)
            _close(_pixels(answer), refiner_models.expected(images, 1.0))

            # A corrupt v3, and a GraspGAN generator published as RCAN v4: both refused.
            refiner_models.publish_corrupt(base, "rcan")
            refiner_models.publish(base, export.KIND_GRASPGAN, name="rcan")

            def refused(v: str) -> float:
                return _metric(
                    "graspfleet_refiner_refused_versions", mode="rcan", model="rcan", version=v
                )

            assert _until(lambda: refused("3") and refused("4"))
            assert version() == 2 and _health(server.address) == SERVING

            # labels.json: the default follows "stable"; other labels and versions by name.
            (base / "rcan" / "labels.json").write_text(json.dumps({"stable": 1, "canary": 2}))
            assert _until(lambda: version() == 1)
            canary = stub.Refine(
                _request(images, RCAN, model=common_pb2.ModelRef(label="canary")), timeout=10
            )
            assert (canary.model.version, canary.model.label) == (2, "canary")
            assert version(model=common_pb2.ModelRef(name="rcan", version=2)) == 2
    finally:
        server.stop(grace_s=0)


@pytest.fixture(scope="module")
def graspgan_only(tmp_path_factory):
    """A refiner serving GraspGAN only, with small request limits."""
    base = tmp_path_factory.mktemp("models")
    refiner_models.publish(base, export.KIND_GRASPGAN)
    server = _server(base, modes=("graspgan",), max_images=4, max_pixels=3 * 64 * 64)
    channel, stub = client.connect(server.address)
    with channel:
        yield server, stub
    server.stop(grace_s=0)


def _bad_bytes() -> common_pb2.Image:
    return common_pb2.Image(encoding=PNG, width=32, height=32, channels=3, data=b"not a png")


def _mask_image() -> common_pb2.Image:
    return encode_image(np.zeros((32, 32), np.uint8), PNG)


BAD_REQUESTS = {
    "empty": (refiner_pb2.RefineRequest(mode=GRASPGAN), Code.INVALID_ARGUMENT, "images is empty"),
    "no mode": (_request(_images(1), mode=0), Code.INVALID_ARGUMENT, "mode=0"),
    "unknown mode": (_request(_images(1), mode=9), Code.INVALID_ARGUMENT, "mode=9"),
    "mode not served": (_request(_images(1), RCAN), Code.FAILED_PRECONDITION, "--modes"),
    "mixed sizes": (
        refiner_pb2.RefineRequest(
            mode=GRASPGAN,
            images=[encode_image(_images(1, 32, 32)[0]), encode_image(_images(1, 32, 40)[0])],
        ),
        Code.INVALID_ARGUMENT,
        "images[1] is 40x32 but images[0] is 32x32",
    ),
    "mixed encodings": (
        refiner_pb2.RefineRequest(
            mode=GRASPGAN,
            images=[
                encode_image(_images(1, 32, 32)[0], PNG),
                encode_image(_images(1, 32, 32)[0], RAW),
            ],
        ),
        Code.INVALID_ARGUMENT,
        "one encoding",
    ),
    "not a png": (
        refiner_pb2.RefineRequest(mode=GRASPGAN, images=[_bad_bytes()]),
        Code.INVALID_ARGUMENT,
        "not a readable PNG",
    ),
    "truncated png": (
        refiner_pb2.RefineRequest(mode=GRASPGAN, images=[damaged_png("truncated", 32)]),
        Code.INVALID_ARGUMENT,
        "images[0]: the image data is damaged",
    ),
    "bit-flipped png": (
        refiner_pb2.RefineRequest(mode=GRASPGAN, images=[damaged_png("bit-flip", 32)]),
        Code.INVALID_ARGUMENT,
        "images[0]: the image data is damaged",
    ),
    "short raw": (
        refiner_pb2.RefineRequest(
            mode=GRASPGAN,
            images=[common_pb2.Image(encoding=RAW, width=32, height=32, channels=3, data=b"x")],
        ),
        Code.INVALID_ARGUMENT,
        "needs 3072 bytes",
    ),
    "a mask": (
        refiner_pb2.RefineRequest(mode=GRASPGAN, images=[_mask_image()]),
        Code.INVALID_ARGUMENT,
        "channels=1",
    ),
    "too small": (_request(_images(1, 8, 8)), Code.INVALID_ARGUMENT, "at least 16 pixels"),
    "jpeg out": (
        _request(_images(1), output_encoding=common_pb2.Image.ENCODING_JPEG),
        Code.INVALID_ARGUMENT,
        "ENCODING_RAW or ENCODING_PNG",
    ),
    "too many images": (_request(_images(5, 16, 16)), Code.RESOURCE_EXHAUSTED, "at most 4"),
    "too many pixels": (_request(_images(4, 64, 64)), Code.RESOURCE_EXHAUSTED, "split the batch"),
    "other model": (
        _request(_images(1), model=common_pb2.ModelRef(name="rcan")),
        Code.INVALID_ARGUMENT,
        "serves model 'graspgan'",
    ),
    "no such version": (
        _request(_images(1), model=common_pb2.ModelRef(version=7)),
        Code.NOT_FOUND,
        "version 7 is not being served",
    ),
    "no such label": (
        _request(_images(1), model=common_pb2.ModelRef(label="canary")),
        Code.NOT_FOUND,
        "no version labelled 'canary'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_status_and_the_service_stays_up(graspgan_only, case):
    server, stub = graspgan_only
    request, code, fragment = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as err:
        stub.Refine(request, timeout=10)
    assert err.value.code() == code, err.value.details()
    assert fragment in err.value.details()
    images = _images(2, 32, 32)
    _close(_pixels(stub.Refine(_request(images), timeout=10)), refiner_models.expected(images))
    assert _health(server.address) == SERVING
