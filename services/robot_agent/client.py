"""Talking to an arm's agent from the outside: its status, and its address's channel."""

from __future__ import annotations

import grpc

from graspfleet.v1 import robot_agent_pb2, robot_agent_pb2_grpc
from services.common import upstream


def connect(address: str) -> tuple[grpc.Channel, robot_agent_pb2_grpc.RobotAgentStub]:
    """A channel and stub for the agent at host:port (TLS as `upstream.channel` decides)."""
    channel = upstream.channel(address)
    return channel, robot_agent_pb2_grpc.RobotAgentStub(channel)


def status(address: str, timeout_s: float = 2.0) -> robot_agent_pb2.AgentStatus:
    """The agent's status: its state, model version, episodes and last error.

    Raises:
        grpc.RpcError: the agent did not answer within `timeout_s`.
    """
    channel, stub = connect(address)
    with channel:
        return stub.GetStatus(robot_agent_pb2.GetStatusRequest(), timeout=timeout_s)


def state_name(agent: robot_agent_pb2.AgentStatus) -> str:
    """The agent's state as people read it: "running", "paused", "safe_stop"..."""
    return robot_agent_pb2.AgentState.Name(agent.state).removeprefix("AGENT_STATE_").lower()
