"""A full spool pauses the arm; it never drops an episode, and collecting resumes as it drains."""

from __future__ import annotations

import socket
import time

from graspfleet.v1 import episode_store_pb2, robot_agent_pb2
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.robot_agent.config import AgentConfig
from services.robot_agent.server import create_server as create_agent
from tests.fixtures.waiting import until

PAUSED = robot_agent_pb2.AGENT_STATE_PAUSED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_full_spool_pauses_the_arm_until_the_store_takes_its_episodes(tmp_path):
    store_port = _free_port()
    server, agent = create_agent(
        AgentConfig(
            port=0,
            robot_id="kuka-01",
            # Random exploration needs no planner; nobody listens at either address yet.
            exploration="random",
            planner_address="127.0.0.1:9",
            store_address=f"127.0.0.1:{store_port}",
            spool_dir=str(tmp_path / "spool"),
            # Full as soon as one episode waits.
            spool_max_bytes=1,
            max_steps=3,
        )
    )
    stores = []
    try:
        assert until(lambda: agent.status().state == PAUSED, 120), agent.status()
        assert "spool full" in agent.status().last_error
        attempted = agent.status().episodes_attempted
        assert attempted >= 1 and agent.status().spool_depth == attempted
        time.sleep(3)  # room for two more episodes, were the arm still collecting
        status = agent.status()
        assert status.state == PAUSED and status.episodes_attempted == attempted
        assert status.spool_depth == attempted  # nothing dropped to make room

        stores.append(
            create_store(EpisodeStoreConfig(port=store_port, data_dir=str(tmp_path / "store")))
        )
        assert until(lambda: agent.status().episodes_attempted >= attempted + 2, 120)
        server.stop()  # the agent drains its spool to the store before it stops
        assert agent.spool.depth() == 0
        channel, stub = client.connect(stores[0].address)
        with channel:
            stored = stub.Stats(episode_store_pb2.StatsRequest()).episodes
        assert stored == agent.status().episodes_attempted
    finally:
        server.stop()
        for store in stores:
            store.stop(grace_s=0)
