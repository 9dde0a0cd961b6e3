"""A robot agent on a proxy-real arm against the real store, predictor and planner."""

from __future__ import annotations

import pytest

from graspfleet.v1 import common_pb2, episode_store_pb2, robot_agent_pb2
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server as create_predictor
from services.robot_agent.config import AgentConfig
from services.robot_agent.server import create_server as create_agent
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from tests.fixtures import models
from tests.fixtures.waiting import until

State = robot_agent_pb2


@pytest.fixture
def fleet(tmp_path):
    models.publish(tmp_path / "models", 1, bias=0.0)
    services = {"store": create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))}
    services["predictor"] = create_predictor(
        PredictorConfig(port=0, model_base_path=str(tmp_path / "models"), settle_s=0)
    )
    services["planner"] = create_planner(
        PlannerConfig(port=0, predictor_address=services["predictor"].address)
    )
    yield services
    for server in services.values():
        server.stop(grace_s=0)


def _agent(fleet, tmp_path, **overrides):
    config = dict(
        port=0,
        robot_id="kuka-01",
        planner_address=fleet["planner"].address,
        store_address=fleet["store"].address,
        spool_dir=str(tmp_path / "spool"),
        max_steps=4,
        plan_timeout_s=2.0,
        safe_stop_retry_s=0.2,
    )
    config.update(overrides)
    return create_agent(AgentConfig(**config))


def _stored(fleet) -> list:
    channel, stub = client.connect(fleet["store"].address)
    with channel:
        return list(client.list_all(stub, episode_store_pb2.EpisodeFilter(robot_ids=["kuka-01"])))


def test_cem_episodes_reach_the_store_with_the_model_that_drove_them(fleet, tmp_path):
    server, agent = _agent(fleet, tmp_path, episodes=2)
    try:
        assert agent.wait(120)
        assert until(lambda: agent.spool.depth() == 0)
    finally:
        server.stop()
    stored = _stored(fleet)
    assert len(stored) == 2 == agent.status().episodes_attempted
    channel, stub = client.connect(fleet["store"].address)
    with channel:
        full = stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(episode_id=stored[0].episode_id, include_steps=True)
        )
    assert full.header.domain == common_pb2.DOMAIN_REAL and full.header.policy == "cem"
    assert full.header.model.version == 1
    assert all(
        s.model.version == 1 and s.HasField("predicted_success")
        for s in full.steps[:-1]
        if s.model.name
    )
    assert not full.header.x0_mask.data  # a real camera has no masks


def test_planner_outage_stops_the_arm_safely_then_the_agent_resumes(fleet, tmp_path):
    server, agent = _agent(fleet, tmp_path)
    try:
        assert until(lambda: agent.status().episodes_attempted >= 1)
        port = fleet["planner"].port
        fleet["planner"].stop(grace_s=0)
        assert until(lambda: agent.status().state == State.AGENT_STATE_SAFE_STOP, 30)
        assert "servo-planner" in agent.status().last_error
        fleet["planner"] = create_planner(
            PlannerConfig(port=port, predictor_address=fleet["predictor"].address)
        )
        before = agent.status().episodes_attempted
        assert until(lambda: agent.status().episodes_attempted >= before + 2, 120)
        assert agent.status().state in (State.AGENT_STATE_RUNNING, State.AGENT_STATE_SAFE_STOP)
    finally:
        server.stop()
    assert until(lambda: len(_stored(fleet)) == agent.status().episodes_attempted, 30)


def test_predictor_outage_stops_the_arm_safely_then_the_agent_resumes(fleet, tmp_path):
    """The predictor restarts under a running agent: the planner answers UNAVAILABLE meanwhile."""
    server, agent = _agent(fleet, tmp_path)
    try:
        assert until(lambda: agent.status().episodes_attempted >= 1)
        port = fleet["predictor"].port
        fleet["predictor"].stop(grace_s=0)
        assert until(lambda: agent.status().state == State.AGENT_STATE_SAFE_STOP, 30)
        assert "grasp-predictor" in agent.status().last_error
        fleet["predictor"] = create_predictor(
            PredictorConfig(port=port, model_base_path=str(tmp_path / "models"), settle_s=0)
        )
        before = agent.status().episodes_attempted
        assert until(lambda: agent.status().episodes_attempted >= before + 2, 120)
    finally:
        server.stop()
    assert until(lambda: len(_stored(fleet)) == agent.status().episodes_attempted, 30)


def test_store_outage_spools_and_nothing_is_lost(fleet, tmp_path):
    store_dir = fleet["store"].config.data_dir
    port = fleet["store"].port
    server, agent = _agent(fleet, tmp_path, exploration="random")
    try:
        assert until(lambda: agent.status().episodes_attempted >= 1)
        fleet["store"].stop(grace_s=0)
        assert until(lambda: agent.status().spool_depth >= 2, 60)
        fleet["store"] = create_store(EpisodeStoreConfig(port=port, data_dir=store_dir))
        assert until(lambda: agent.status().spool_depth == 0, 60)
    finally:
        server.stop()
    assert len(_stored(fleet)) == agent.status().episodes_attempted
