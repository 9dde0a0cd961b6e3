"""The planner is ready only while a grasp-predictor answers; it stays alive either way."""

from __future__ import annotations

import socket

from services.common.server import LIVENESS
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server as create_predictor
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import SERVICE_NAME
from services.servo_planner.server import create_server as create_planner
from tests.fixtures.health import NOT_SERVING, SERVING, health, readiness
from tests.fixtures.waiting import until


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
        assert readiness(planner.address, SERVICE_NAME) == {
            NOT_SERVING
        }  # nothing listens at the predictor's address
        assert health(planner.address, LIVENESS) == SERVING

        # A predictor with no model yet answers: the planner is ready (a new fleet's first
        # model arrives after its planner started; the predictor says so per call).
        predictor = create_predictor(
            PredictorConfig(port=port, model_base_path=str(tmp_path), settle_s=0)
        )
        assert until(lambda: readiness(planner.address, SERVICE_NAME) == {SERVING}, 60)

        predictor.stop(grace_s=0)
        assert until(lambda: readiness(planner.address, SERVICE_NAME) == {NOT_SERVING}, 60)
        assert health(planner.address, LIVENESS) == SERVING
    finally:
        if predictor is not None:
            predictor.stop(grace_s=0)
        planner.stop(grace_s=0)
