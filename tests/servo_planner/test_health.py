"""The planner is ready only while a grasp-predictor answers; it stays alive either way."""

from __future__ import annotations

import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.server import LIVENESS
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server as create_predictor
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import SERVICE_NAME
from services.servo_planner.server import create_server as create_planner
from tests.fixtures.waiting import until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def _readiness(address: str) -> set[int]:
    """The statuses of the server as a whole and of the planner: one, except while it flips."""
    return {_health(address, service) for service in ("", SERVICE_NAME)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ready_only_while_a_predictor_answers(tmp_path):
    port = _free_port()
    planner = create_planner(
        PlannerConfig(port=0, predictor_address=f"127.0.0.1:{port}", health_check_period_s=0.2)
    )
    predictor = None
    try:
        assert _readiness(planner.address) == {
            NOT_SERVING
        }  # nothing listens at the predictor's address
        assert _health(planner.address, LIVENESS) == SERVING

        # A predictor with no model yet answers: the planner is ready (a new fleet's first
        # model arrives after its planner started; the predictor says so per call).
        predictor = create_predictor(
            PredictorConfig(port=port, model_base_path=str(tmp_path), settle_s=0)
        )
        assert until(lambda: _readiness(planner.address) == {SERVING}, 60)

        predictor.stop(grace_s=0)
        assert until(lambda: _readiness(planner.address) == {NOT_SERVING}, 60)
        assert _health(planner.address, LIVENESS) == SERVING
    finally:
        if predictor is not None:
            predictor.stop(grace_s=0)
        planner.stop(grace_s=0)
