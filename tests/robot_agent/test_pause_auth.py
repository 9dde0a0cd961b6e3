"""Pause and Resume move a real arm: they need the agent's bearer token; GetStatus stays open."""

from __future__ import annotations

import grpc
import pytest

from graspfleet.v1 import robot_agent_pb2, robot_agent_pb2_grpc
from services.common.auth import bearer
from services.robot_agent.config import AgentConfig
from services.robot_agent.server import create_server
from tests.fixtures.waiting import until

TOKEN = "pause-test-token"
PAUSE = robot_agent_pb2.PauseRequest(reason="test")
RESUME = robot_agent_pb2.ResumeRequest()


def _start(tmp_path, token: str):
    # Random exploration never calls the planner, and episodes wait in the spool for a
    # store that is not there: the arm grasps on its own, which is all Pause needs.
    server, _ = create_server(
        AgentConfig(
            port=0,
            grace_s=0.0,
            robot_id="kuka-01",
            planner_address="127.0.0.1:9",
            store_address="127.0.0.1:9",
            exploration="random",
            spool_dir=str(tmp_path / "spool"),
            spool_drain_s=0.0,
            max_steps=2,
            auth_token=token,
        )
    )
    return server


@pytest.fixture
def agent(tmp_path):
    server = _start(tmp_path, TOKEN)
    channel = grpc.insecure_channel(server.address)
    yield robot_agent_pb2_grpc.RobotAgentStub(channel)
    channel.close()
    server.stop()


def _state(stub) -> int:
    return stub.GetStatus(robot_agent_pb2.GetStatusRequest(), timeout=10).state


def _attempted(stub) -> int:
    return stub.GetStatus(robot_agent_pb2.GetStatusRequest(), timeout=10).episodes_attempted


@pytest.mark.parametrize("method", ["Pause", "Resume"])
@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ([], grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", f"Basic {TOKEN}")], grpc.StatusCode.UNAUTHENTICATED),
        (bearer("not-the-token"), grpc.StatusCode.PERMISSION_DENIED),
    ],
    ids=["missing", "not-bearer", "wrong"],
)
def test_pause_and_resume_need_the_bearer_token(agent, method, metadata, code):
    request = PAUSE if method == "Pause" else RESUME
    with pytest.raises(grpc.RpcError) as refused:
        getattr(agent, method)(request, metadata=metadata, timeout=10)
    assert refused.value.code() == code
    assert _state(agent) != robot_agent_pb2.AGENT_STATE_PAUSED  # reads need no token


def test_a_refused_pause_leaves_the_arm_grasping(agent):
    with pytest.raises(grpc.RpcError):
        agent.Pause(PAUSE, metadata=bearer("not-the-token"), timeout=10)
    attempted = _attempted(agent)
    # An episode may have been under way; a paused arm would start no other.
    assert until(lambda: _attempted(agent) > attempted + 1, 120)


def test_the_token_pauses_and_resumes_the_arm(agent):
    agent.Pause(PAUSE, metadata=bearer(TOKEN), timeout=10)
    assert until(lambda: _state(agent) == robot_agent_pb2.AGENT_STATE_PAUSED, 120)
    agent.Resume(RESUME, metadata=bearer(TOKEN), timeout=10)
    assert until(lambda: _state(agent) == robot_agent_pb2.AGENT_STATE_RUNNING, 60)


def test_an_empty_token_disables_authentication_and_says_so(tmp_path, caplog):
    server = _start(tmp_path, "")
    try:
        assert "AUTHENTICATION DISABLED" in caplog.text and "pause" in caplog.text
        with grpc.insecure_channel(server.address) as channel:
            stub = robot_agent_pb2_grpc.RobotAgentStub(channel)
            stub.Pause(PAUSE, timeout=10)
            assert until(lambda: _state(stub) == robot_agent_pb2.AGENT_STATE_PAUSED, 120)
    finally:
        server.stop()


def test_the_client_reads_an_agents_status_by_address(tmp_path):
    from services.robot_agent import client

    server = _start(tmp_path, TOKEN)
    try:
        assert until(lambda: client.status(server.address).episodes_attempted >= 1, timeout_s=60)
        status = client.status(server.address)
        assert client.state_name(status) in ("running", "starting")
        assert status.robot_id == "kuka-01"
    finally:
        server.stop()
    with pytest.raises(grpc.RpcError):
        client.status(server.address, timeout_s=1)
