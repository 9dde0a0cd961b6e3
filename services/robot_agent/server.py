"""The robot agent's process: the agent loop plus its gRPC status API (GetStatus, Pause, Resume)."""

from __future__ import annotations

from graspfleet.v1 import robot_agent_pb2, robot_agent_pb2_grpc
from services.common import logs
from services.common.auth import BearerAuth
from services.common.config import load_config
from services.common.server import ServiceServer, stop_signals
from services.robot_agent.agent import Agent
from services.robot_agent.config import AgentConfig

SERVICE_NAME = robot_agent_pb2.DESCRIPTOR.services_by_name["RobotAgent"].full_name
log = logs.get_logger(__name__)


class RobotAgentServicer(robot_agent_pb2_grpc.RobotAgentServicer):
    """The agent's status API; Pause and Resume need the bearer token."""

    def __init__(self, agent: Agent, auth: BearerAuth) -> None:
        self.agent = agent
        self.auth = auth

    def GetStatus(self, request, context):
        """The agent's status."""
        return self.agent.status()

    def Pause(self, request, context):
        """Pauses the arm before its next episode; returns the status."""
        by = self.auth.check(context)
        log.info("pause requested", extra={"reason": request.reason, "by": by})
        self.agent.pause()
        return self.agent.status()

    def Resume(self, request, context):
        """Resumes a paused arm; returns the status."""
        by = self.auth.check(context)
        log.info("resume requested", extra={"by": by})
        self.agent.resume()
        return self.agent.status()


def create_server(config: AgentConfig) -> tuple[ServiceServer, Agent]:
    """Starts the agent and its API; SERVING once the arm is connected and the loop runs."""
    auth = BearerAuth(config.auth_token, "robot agent", "pause and resume the arm")
    agent = Agent(config)
    server = ServiceServer(
        f"robot-agent-{config.robot_id}",
        config,
        lambda grpc_server: robot_agent_pb2_grpc.add_RobotAgentServicer_to_server(
            RobotAgentServicer(agent, auth), grpc_server
        ),
        [SERVICE_NAME],
        on_stop=agent.stop,
    )
    agent.start()
    server.set_serving(True)
    return server, agent


def main(argv: list[str] | None = None) -> None:
    """`graspfleet agent serve`: drives one arm until SIGTERM (or its episode limit)."""
    config = load_config(AgentConfig, "graspfleet agent serve", argv)
    logs.configure_logging(f"robot-agent-{config.robot_id}", config.log_level, config.log_format)
    stop = stop_signals()  # before the port file: a SIGTERM from then on drains
    server, agent = create_server(config)
    # With an episode limit the process ends once the arm has done them all.
    server.wait(done=lambda: bool(config.episodes) and agent.wait(0), stop=stop)
