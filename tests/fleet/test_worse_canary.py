"""A worse canary is rolled back on the arms' own grasps while stable keeps the other arm.

Everything is real: the episode store, the grasp predictor on a model repository,
the servo planner, the trainer's rollout loop and two robot agents driving the
proxy-real arms kuka-01 and kuka-02 (PyBullet behind a real-looking camera).

Rerun the success rates quoted below: `.venv/bin/python -m tests.fleet.test_worse_canary 60`.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
from prometheus_client import REGISTRY

from graspfleet.v1 import common_pb2, episode_store_pb2, trainer_pb2, trainer_pb2_grpc
from models.registry import CANARY, STABLE, Registry
from services.common.server import ServiceServer
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server as create_predictor
from services.robot_agent.agent import Agent
from services.robot_agent.config import AgentConfig
from services.robot_agent.server import create_server as create_agent
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from services.trainer.config import TrainerConfig
from services.trainer.server import create_server as create_trainer
from tests.fixtures import models
from tests.fixtures.waiting import until

NAME = "grasp_success"
# CEM samples grasp targets in the lowest 3 cm of the workspace; the weights pick among them
# (motion = dx, dy, dz cm, sin, cos). Stable scores lower targets higher: it closes on the
# tray floor, among the objects. The canary scores the top of that band in the workspace's
# corner nearest the base (low x, low y), beyond where objects are dropped: it closes above
# and beside them. Measured by this module's `measure` (command in the docstring), 60
# episodes per arm from the arms' inventory seeds, planner defaults, max_steps 8: stable on
# kuka-01 19/60 = 0.32, canary on kuka-02 3/60 = 0.05 (its first success in episode 27);
# stable's first 12 include 4 successes. The same seeds gave the same episodes on every run.
STABLE_WEIGHTS = (0.0, 0.0, -1.0, 0.0, 0.0)
CANARY_WEIGHTS = (-1.0, -1.0, 1.0, 0.0, 0.0)
STABLE_ARM, CANARY_ARM = "kuka-01", "kuka-02"
MIN_GRASPS = 12  # each side, before the rollout decides: 0/12 against 3/12 is P(worse) 0.952
PREDICTOR_POLL_S = 0.25
AFTER_ROLLBACK = 3  # canary-arm episodes planned with stable's version once the label moved

ABORTED = "graspfleet_agent_episodes_aborted_total"
SAFE_STOPPED = "graspfleet_agent_safe_stopped"
DECISIONS = "graspfleet_trainer_rollout_decisions_total"


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextlib.contextmanager
def _fleet(root: Path, rollout_interval_s: float) -> Iterator[dict[str, ServiceServer]]:
    """Stable (version 1) and the canary (version 2) published and labelled, then a store,
    predictor, planner and trainer on loopback; every server stops when the block ends."""
    models.publish(root / "models", 1, bias=0.0, motion_weights=STABLE_WEIGHTS)
    models.publish(root / "models", 2, bias=0.0, motion_weights=CANARY_WEIGHTS)
    registry = Registry(root / "models")
    registry.set_label(NAME, 1, STABLE, by="test", reason="the fleet's model")
    registry.set_label(NAME, 2, CANARY, by="test", reason="planted: worse than stable")
    store = EpisodeStoreConfig(port=0, data_dir=str(root / "store"), grace_s=0)
    fleet = {"store": create_store(store)}
    try:
        fleet["predictor"] = create_predictor(
            PredictorConfig(
                port=0,
                model_base_path=str(root / "models"),
                settle_s=0,
                poll_interval_s=PREDICTOR_POLL_S,
            )
        )
        fleet["planner"] = create_planner(
            PlannerConfig(port=0, predictor_address=fleet["predictor"].address)
        )
        fleet["trainer"] = create_trainer(
            TrainerConfig(
                port=0,
                grace_s=0.0,
                state_dir=str(root / "trainer"),
                model_base=str(root / "models"),
                store_address=fleet["store"].address,
                store_data_dir=fleet["store"].config.data_dir,
                k8s_api="off",
                rollout_interval_s=rollout_interval_s,
                rollout_min_grasps=MIN_GRASPS,
                # Far beyond the test: a rollback here is the evidence's, never the clock's.
                rollout_max_grasps=10_000,
                rollout_max_wait_s=3600.0,
                rollout_margin=0.05,
                rollout_confidence=0.95,
            )
        )
        yield fleet
    finally:
        for server in reversed(fleet.values()):
            server.stop(grace_s=0)


def _agent(
    fleet: dict[str, ServiceServer], root: Path, robot_id: str, label: str, episodes: int = 0
) -> tuple[ServiceServer, Agent]:
    return create_agent(
        AgentConfig(
            port=0,
            robot_id=robot_id,
            planner_address=fleet["planner"].address,
            store_address=fleet["store"].address,
            spool_dir=str(root / "spool"),
            model_label=label,
            episodes=episodes,
            # Generous on a loaded 2-core machine: a step that fails here must be the
            # label move's doing, not a slow CPU's.
            plan_timeout_s=10.0,
        )
    )


def _stored(
    fleet: dict[str, ServiceServer], robot_id: str
) -> list[episode_store_pb2.GetEpisodeResponse]:
    """The arm's stored episodes with their steps, in the order the arm recorded them."""
    channel, stub = client.connect(fleet["store"].address)
    with channel:
        flt = episode_store_pb2.EpisodeFilter(robot_ids=[robot_id])
        summaries = sorted(client.list_all(stub, flt), key=lambda s: s.started_at.ToNanoseconds())
        return [
            stub.GetEpisode(
                episode_store_pb2.GetEpisodeRequest(episode_id=s.episode_id, include_steps=True)
            )
            for s in summaries
        ]


def _step_versions(episode: episode_store_pb2.GetEpisodeResponse) -> list[int]:
    """The model version that chose each planned step (the final close is the arm's own)."""
    return [s.model.version for s in episode.steps if s.model.name]


def test_a_worse_canary_is_rolled_back_on_real_grasps_without_a_failed_step(tmp_path):
    aborted = {arm: _sample(ABORTED, robot_id=arm) for arm in (STABLE_ARM, CANARY_ARM)}
    rollbacks = _sample(DECISIONS, model=NAME, decision="rollback")
    with _fleet(tmp_path, rollout_interval_s=0.5) as fleet:
        registry = Registry(tmp_path / "models")
        agents = {
            STABLE_ARM: _agent(fleet, tmp_path, STABLE_ARM, STABLE),
            CANARY_ARM: _agent(fleet, tmp_path, CANARY_ARM, CANARY),
        }
        canary_agent = agents[CANARY_ARM][1]
        try:
            assert until(lambda: registry.labels(NAME)[CANARY] == 1, 120), "no rollback"
            assert registry.labels(NAME) == {STABLE: 1, CANARY: 1}
            # The canary arm picks stable's version up through its label, without a restart.
            assert until(lambda: canary_agent.status().model.version == 1, 60)
            switched = canary_agent.status().episodes_attempted
            assert until(
                lambda: canary_agent.status().episodes_attempted >= switched + AFTER_ROLLBACK, 60
            )
            assert until(lambda: _sample(DECISIONS, model=NAME, decision="rollback") > rollbacks)
            for arm, (_, agent) in agents.items():
                status = agent.status()
                assert status.last_error == "", f"{arm}: {status.last_error}"
                assert _sample(SAFE_STOPPED, robot_id=arm) == 0.0
        finally:
            for server, _ in agents.values():
                server.stop()
        with grpc.insecure_channel(fleet["trainer"].address) as channel:
            changes = (
                trainer_pb2_grpc.TrainerStub(channel)
                .ListLabelChanges(
                    trainer_pb2.ListLabelChangesRequest(name=NAME, label=CANARY), timeout=10
                )
                .changes
            )
        stored = {arm: _stored(fleet, arm) for arm in agents}

    back = changes[-1]
    assert (back.by, back.version, back.previous) == ("rollout", 1, 2)
    assert "canary 2 rolled back" in back.reason and "shown worse" in back.reason
    assert _sample(DECISIONS, model=NAME, decision="rollback") == rollbacks + 1
    # Decided on the arms' grasps: at least the minimum each, no more than they made.
    canary_n, stable_n = (
        int(re.search(rf"{who} \d+/(\d+)", back.reason)[1]) for who in (CANARY, STABLE)
    )
    canary_driven = [e for e in stored[CANARY_ARM] if e.summary.model.version == 2]
    assert MIN_GRASPS <= canary_n <= len(canary_driven)
    assert MIN_GRASPS <= stable_n <= len(stored[STABLE_ARM])

    for arm, (_, agent) in agents.items():
        episodes = stored[arm]
        assert len(episodes) == agent.status().episodes_attempted, f"{arm} lost episodes"
        assert _sample(ABORTED, robot_id=arm) == aborted[arm], f"{arm} stopped mid-episode"
        assert all(
            e.outcome.result in (common_pb2.GRASP_RESULT_SUCCESS, common_pb2.GRASP_RESULT_FAILURE)
            and e.outcome.num_steps == len(e.steps) >= 1
            for e in episodes
        ), f"{arm} has an incomplete episode"
    assert all(
        e.summary.model.version == 1 and set(_step_versions(e)) == {1} for e in stored[STABLE_ARM]
    )
    # The canary arm: version 2 until the label moved, version 1 from then on, never back.
    versions = [v for e in stored[CANARY_ARM] for v in _step_versions(e)]
    assert versions == sorted(versions, reverse=True) and versions[0] == 2
    after = [e for e in stored[CANARY_ARM] if set(_step_versions(e)) == {1}]
    assert len(after) >= AFTER_ROLLBACK
    assert all(e.outcome.ended_at.ToNanoseconds() >= back.time.ToNanoseconds() for e in after)


def measure(episodes: int, root: Path) -> dict[str, tuple[int, int]]:
    """(successes, attempts) of stable on kuka-01 and the canary on kuka-02, rollout off."""
    with _fleet(root, rollout_interval_s=0.0) as fleet:
        agents = {
            STABLE_ARM: _agent(fleet, root, STABLE_ARM, STABLE, episodes),
            CANARY_ARM: _agent(fleet, root, CANARY_ARM, CANARY, episodes),
        }
        rates = {}
        for arm, (server, agent) in agents.items():
            agent.wait()
            status = agent.status()
            rates[arm] = (status.episodes_succeeded, status.episodes_attempted)
            server.stop()
    return rates


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for arm, (successes, attempts) in measure(int(sys.argv[1]), Path(tmp)).items():
            print(f"{arm}: {successes}/{attempts} = {successes / attempts:.2f}")
