"""PlanStep runs the image trunk once per step where the model version allows, and falls back where not."""

from __future__ import annotations

import json
import os
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import REGISTRY
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc as serving_grpc

from graspfleet.v1 import common_pb2, servo_planner_pb2, servo_planner_pb2_grpc
from models import registry
from models.grasp_success import export
from models.grasp_success.model import ModelConfig, build_model
from services.common.images import encode_image
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server as create_predictor
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from tests.fixtures.waiting import until

SIGNATURES = (export.SIGNATURE_KEY, export.FEATURES_SIGNATURE, export.SCORE_FEATURES_SIGNATURE)


def _publish_without_split(model, base, version: int) -> None:
    """The network as exports before the split signatures wrote it: serving_default alone."""
    folder = base / export.DEFAULT_NAME
    staging = folder / f".tmp-legacy-{version}"
    module = export.ServingModule(model)
    tf.saved_model.save(module, str(staging), signatures={export.SIGNATURE_KEY: module.serve})
    (staging / registry.METADATA_FILE).write_text(json.dumps({"image_size": [64, 64]}))
    os.rename(staging, folder / str(version))


class _TfServingLike(serving_grpc.PredictionServiceServicer):
    """Forwards to our predictor, refusing a missing signature as TF Serving does."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = serving_grpc.PredictionServiceStub(self.channel)

    def _forward(self, method, request, context):
        try:
            return method(request, timeout=context.time_remaining())
        except grpc.RpcError as err:
            if "has no signature" in err.details():
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f'Serving signature key "{request.model_spec.signature_name}" not found.',
                )
            context.abort(err.code(), err.details())

    def Predict(self, request, context):
        return self._forward(self.stub.Predict, request, context)

    def GetModelMetadata(self, request, context):
        return self._forward(self.stub.GetModelMetadata, request, context)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One network published twice: v1 without the split signatures, v2 with them."""
    base = tmp_path_factory.mktemp("models")
    model = build_model(ModelConfig(profile="default"))
    rng = np.random.default_rng(1)
    for variable in model.trainable_variables:  # scores that differ between motions
        variable.assign(rng.uniform(-0.3, 0.3, variable.shape).astype(np.float32))
    _publish_without_split(model, base, 1)
    assert export.export_model(model, base)[0] == 2
    return base


@pytest.fixture(params=["graspfleet", "tf-serving-like"])
def fleet(base, request):
    (base / export.DEFAULT_NAME / "labels.json").write_text('{"legacy": 1, "split": 2}')
    predictor = create_predictor(
        PredictorConfig(port=0, model_base_path=str(base), settle_s=0, poll_interval_s=0.2)
    )
    address, proxy = predictor.address, None
    if request.param == "tf-serving-like":
        proxy = grpc.server(futures.ThreadPoolExecutor(4))
        serving_grpc.add_PredictionServiceServicer_to_server(
            _TfServingLike(predictor.address), proxy
        )
        address = f"127.0.0.1:{proxy.add_insecure_port('127.0.0.1:0')}"
        proxy.start()
    planner = create_planner(PlannerConfig(port=0, predictor_address=address))
    with grpc.insecure_channel(planner.address) as channel:
        yield predictor, servo_planner_pb2_grpc.ServoPlannerStub(channel)
    planner.stop(grace_s=0)
    if proxy is not None:
        proxy.stop(0)
    predictor.stop(grace_s=0)


def _calls() -> dict[str, float]:
    """Predict requests the predictor has run so far, by signature."""
    return {
        name: REGISTRY.get_sample_value(
            "graspfleet_predictor_predict_requests_total",
            {"model": export.DEFAULT_NAME, "signature": name},
        )
        or 0.0
        for name in SIGNATURES
    }


def _step(stub, model: common_pb2.ModelRef, seed: int = 7) -> servo_planner_pb2.PlanStepResponse:
    rng = np.random.default_rng(seed)
    request = servo_planner_pb2.PlanStepRequest(
        robot_id="kuka-01",
        x0=encode_image(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        xt=encode_image(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        current_pose=common_pb2.Pose(position_m=common_pb2.Vec3(x=0.6, y=0.07, z=0.3)),
        workspace=common_pb2.Workspace(
            min_m=common_pb2.Vec3(x=0.45, y=-0.12, z=0.08),
            max_m=common_pb2.Vec3(x=0.83, y=0.27, z=0.40),
        ),
        model=model,
        seed=seed,
        budget_ms=20000,
    )
    return stub.PlanStep(request, timeout=30)


def _counted(stub, model: common_pb2.ModelRef) -> tuple[servo_planner_pb2.PlanStepResponse, dict]:
    before = _calls()
    response = _step(stub, model)
    after = _calls()
    return response, {name: int(after[name] - before[name]) for name in SIGNATURES}


def _label(label: str) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=export.DEFAULT_NAME, label=label)


def test_a_version_with_the_split_runs_the_image_trunk_once_per_step(fleet):
    _, stub = fleet
    for _ in range(2):
        response, calls = _counted(stub, _label("split"))
        assert response.model.version == 2 and response.iterations_done == 3
        assert calls == {
            export.SIGNATURE_KEY: 0,
            export.FEATURES_SIGNATURE: 1,
            export.SCORE_FEATURES_SIGNATURE: 3,
        }


def test_a_version_without_the_split_falls_back_and_is_remembered(fleet):
    _, stub = fleet
    response, calls = _counted(stub, _label("legacy"))
    assert response.model.version == 1 and response.iterations_done == 3
    # The refused image_features request never reaches the model.
    assert calls == {
        export.SIGNATURE_KEY: 3,
        export.FEATURES_SIGNATURE: 0,
        export.SCORE_FEATURES_SIGNATURE: 0,
    }
    response, calls = _counted(stub, common_pb2.ModelRef(name=export.DEFAULT_NAME, version=1))
    assert response.model.version == 1
    assert calls[export.SIGNATURE_KEY] == 3 and calls[export.SCORE_FEATURES_SIGNATURE] == 0


def test_both_paths_plan_the_same_step(fleet):
    _, stub = fleet
    legacy, split = _step(stub, _label("legacy")), _step(stub, _label("split"))
    assert (legacy.model.version, split.model.version) == (1, 2)
    assert legacy.command.kind == split.command.kind
    for field in ("dx_cm", "dy_cm", "dz_cm", "sin_dyaw", "cos_dyaw"):
        assert getattr(legacy.command.motion, field) == pytest.approx(
            getattr(split.command.motion, field), abs=1e-3
        )
    assert legacy.predicted_success == pytest.approx(split.predicted_success, abs=1e-5)
    assert legacy.close_success == pytest.approx(split.close_success, abs=1e-5)


def test_a_label_moved_to_a_version_with_the_split_gets_it(fleet, base):
    predictor, stub = fleet
    labels = base / export.DEFAULT_NAME / "labels.json"
    labels.write_text('{"legacy": 1, "split": 2, "stable": 1}')
    with grpc.insecure_channel(predictor.address) as channel:
        status = model_service_pb2_grpc.ModelServiceStub(channel)

        def stable_is(version: int) -> bool:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = export.DEFAULT_NAME
            request.model_spec.version_label = "stable"
            try:
                answer = status.GetModelStatus(request, timeout=5).model_version_status
            except grpc.RpcError:
                return False
            return [s.version for s in answer] == [version]

        assert until(lambda: stable_is(1), timeout_s=30)
        assert _counted(stub, _label("stable"))[1][export.SIGNATURE_KEY] == 3
        labels.write_text('{"legacy": 1, "split": 2, "stable": 2}')
        assert until(lambda: stable_is(2), timeout_s=30)
    # The first step after the move learns the label's new version, the next uses the split.
    assert _step(stub, _label("stable")).model.version == 2
    response, calls = _counted(stub, _label("stable"))
    assert response.model.version == 2
    assert calls[export.FEATURES_SIGNATURE] == 1 and calls[export.SIGNATURE_KEY] == 0
