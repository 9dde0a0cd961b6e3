"""PlanStep over a real predictor: the servoing decisions, deadlines, failures and bad input."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from graspfleet.v1 import common_pb2, servo_planner_pb2, servo_planner_pb2_grpc
from services.common.images import encode_image
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server as create_predictor
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from tests.fixtures import models
from tests.fixtures.images import damaged_png

Kind = common_pb2.Command


@pytest.fixture
def fleet(tmp_path):
    """A predictor serving test models of bias 8 (v1), 0 (v2) and -3 (v3), and a planner using it."""
    for version, bias in ((1, 8.0), (2, 0.0), (3, -3.0)):
        models.publish(tmp_path, version, bias)
    (tmp_path / "grasp_success" / "labels.json").write_text('{"sure": 1, "torn": 2, "hopeless": 3}')
    predictor = create_predictor(PredictorConfig(port=0, model_base_path=str(tmp_path), settle_s=0))
    planner = create_planner(PlannerConfig(port=0, predictor_address=predictor.address))
    with grpc.insecure_channel(planner.address) as channel:
        yield predictor, planner, servo_planner_pb2_grpc.ServoPlannerStub(channel)
    planner.stop(grace_s=0)
    predictor.stop(grace_s=0)


def _request(label: str, **changes) -> servo_planner_pb2.PlanStepRequest:
    image = encode_image(np.full((models.IMAGE_SIZE, models.IMAGE_SIZE, 3), 100, np.uint8))
    request = servo_planner_pb2.PlanStepRequest(
        robot_id="kuka-01",
        x0=image,
        xt=image,
        current_pose=common_pb2.Pose(position_m=common_pb2.Vec3(x=0.5, y=0.0, z=0.02)),
        workspace=common_pb2.Workspace(
            min_m=common_pb2.Vec3(x=0.2, y=-0.2, z=0.0), max_m=common_pb2.Vec3(x=0.8, y=0.2, z=0.3)
        ),
        model=common_pb2.ModelRef(name="grasp_success", label=label),
        seed=7,
    )
    for key, value in changes.items():
        if hasattr(value, "DESCRIPTOR"):
            getattr(request, key).CopyFrom(value)
        else:
            setattr(request, key, value)
    return request


@pytest.mark.parametrize(
    ("label", "kind"),
    [
        ("sure", Kind.KIND_CLOSE),  # C(no motion) ~ C(best): close now
        ("torn", Kind.KIND_MOVE),  # 0.5 <= C(no motion) / C(best) < 0.9: move
        (
            "hopeless",
            Kind.KIND_RAISE,
        ),  # C(no motion) far below C(best): move with the gripper raised
    ],
)
def test_servoing_decisions(fleet, label, kind):
    _, _, stub = fleet
    response = stub.PlanStep(_request(label), timeout=10)
    assert response.command.kind == kind
    assert response.model.version == {"sure": 1, "torn": 2, "hopeless": 3}[label]
    assert response.iterations_done == 3 and not response.deadline_reached
    if kind != Kind.KIND_CLOSE:
        # The test models reward moving towards -x: CEM finds the workspace's far edge (30 cm away).
        assert response.command.motion.dx_cm < -20
        assert response.predicted_success > response.close_success


@pytest.mark.parametrize(
    ("label", "servoing", "kind"),
    [
        # "torn" moves under the planner's 0.9 / 0.5; a request's own thresholds decide instead.
        ("torn", common_pb2.ServoingParams(close_ratio=0.3, raise_ratio=0.2), Kind.KIND_CLOSE),
        ("torn", common_pb2.ServoingParams(close_ratio=1.0, raise_ratio=0.99), Kind.KIND_RAISE),
        ("torn", common_pb2.ServoingParams(), Kind.KIND_MOVE),
        ("sure", common_pb2.ServoingParams(close_ratio=1.0, raise_ratio=0.5), Kind.KIND_MOVE),
    ],
)
def test_a_request_sets_its_own_servoing_thresholds(fleet, label, servoing, kind):
    _, _, stub = fleet
    response = stub.PlanStep(_request(label, servoing=servoing), timeout=10)
    assert response.command.kind == kind, response


def test_exploration_returns_random_commands(fleet):
    _, _, stub = fleet
    response = stub.PlanStep(_request("torn", epsilon=1.0), timeout=10)
    assert response.random and response.command.kind == Kind.KIND_MOVE


def test_a_budget_too_small_for_one_iteration_still_plans_one(fleet):
    # However loaded the machine, 1 ms is over once the first iteration is: exactly one runs.
    _, _, stub = fleet
    response = stub.PlanStep(
        _request("torn", cem=servo_planner_pb2.CemParams(iterations=20), budget_ms=1), timeout=10
    )
    assert response.iterations_done == 1 and response.deadline_reached
    assert response.command.kind == Kind.KIND_MOVE


def test_predictor_down_is_unavailable_and_the_planner_stays_up(fleet):
    predictor, planner, stub = fleet
    predictor.stop(grace_s=0)
    with pytest.raises(grpc.RpcError) as failed:
        stub.PlanStep(_request("torn"), timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "grasp-predictor" in failed.value.details()


@pytest.mark.parametrize(
    ("change", "code", "fragment"),
    [
        (
            dict(model=common_pb2.ModelRef(name="grasp_success", label="gold")),
            grpc.StatusCode.NOT_FOUND,
            "'gold'",
        ),
        (
            dict(workspace=common_pb2.Workspace()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "must be below max",
        ),
        (dict(epsilon=2.0), grpc.StatusCode.INVALID_ARGUMENT, "epsilon=2.0"),
        (dict(xt=common_pb2.Image()), grpc.StatusCode.INVALID_ARGUMENT, "xt.encoding is not set"),
        (dict(xt=damaged_png("truncated")), grpc.StatusCode.INVALID_ARGUMENT, "xt: the image data"),
        (dict(x0=damaged_png("bit-flip")), grpc.StatusCode.INVALID_ARGUMENT, "x0: the image data"),
        (
            dict(cem=servo_planner_pb2.CemParams(population=4, elites=9)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cem.elites=9",
        ),
        (
            dict(servoing=common_pb2.ServoingParams(close_ratio=0.3)),  # below raise's 0.5
            grpc.StatusCode.INVALID_ARGUMENT,
            "raise_ratio <= close_ratio",
        ),
    ],
)
def test_bad_requests(fleet, change, code, fragment):
    _, _, stub = fleet
    request = _request("torn", **change)
    with pytest.raises(grpc.RpcError) as refused:
        stub.PlanStep(request, timeout=10)
    assert refused.value.code() == code, refused.value.details()
    assert fragment in refused.value.details()


def test_the_gripper_does_not_close_far_above_the_floor(fleet):
    _, _, stub = fleet
    high = _request(
        "sure", current_pose=common_pb2.Pose(position_m=common_pb2.Vec3(x=0.5, y=0.0, z=0.25))
    )
    assert stub.PlanStep(high, timeout=10).command.kind != Kind.KIND_CLOSE
