"""graspfleet_agent_safe_stopped holds 1 through a safe stop's retries and falls to 0 with
the next finished grasp; graspfleet_agent_spool_max_bytes exports the spool's cap. The
GraspfleetArmSafeStopped and GraspfleetAgentSpoolFilling alerts read them."""

from __future__ import annotations

import socket
import time

from prometheus_client import REGISTRY

from services.robot_agent.config import AgentConfig
from services.robot_agent.server import create_server as create_agent
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from tests.fixtures.waiting import until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def safe_stopped(robot_id: str) -> float | None:
    return REGISTRY.get_sample_value("graspfleet_agent_safe_stopped", {"robot_id": robot_id})


def test_the_safe_stop_gauge_spans_the_outage(tmp_path):
    planner_port = _free_port()
    server, agent = create_agent(
        AgentConfig(
            port=0,
            robot_id="kuka-02",
            # Every command from the planner (random ones: no predictor needed), which is away.
            exploration="eps-mix",
            epsilon=1.0,
            planner_address=f"127.0.0.1:{planner_port}",
            store_address="127.0.0.1:9",
            spool_dir=str(tmp_path / "spool"),
            spool_max_bytes=3 * 1024**3,
            max_steps=3,
            safe_stop_retry_s=0.2,
            plan_timeout_s=0.5,
        )
    )
    planners = []
    try:
        assert (
            REGISTRY.get_sample_value("graspfleet_agent_spool_max_bytes", {"spool": "kuka-02"})
            == 3 * 1024**3
        )
        assert until(lambda: safe_stopped("kuka-02") == 1, 60)
        # The agent retries every 0.2 s (its state flickers to running); the gauge holds.
        samples = []
        for _ in range(20):
            samples.append(safe_stopped("kuka-02"))
            time.sleep(0.05)
        assert samples == [1] * 20
        planners.append(
            create_planner(PlannerConfig(port=planner_port, predictor_address="127.0.0.1:9"))
        )
        assert until(lambda: safe_stopped("kuka-02") == 0, 120)
        assert agent.status().episodes_attempted >= 1
    finally:
        server.stop()
        for planner in planners:
            planner.stop(grace_s=0)
