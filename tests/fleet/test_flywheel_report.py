"""The flywheel's view of the fleet and the run's report, on a real store and model registry."""

from __future__ import annotations

import time

import pytest

from graspfleet.v1 import common_pb2, trainer_pb2
from models.episodes import synthetic as samples
from models.registry import Registry
from models.scoring import wilson
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server
from services.fleet import flywheel, report
from services.fleet.flywheel import RANDOM, ArmState, Snapshot
from tests.fixtures import models

REAL = common_pb2.DOMAIN_REAL


def _episode(seed: int, version: int, success: bool, robot: str = "kuka-01"):
    record = samples.sample_episode(seed, robot_id=robot, domain=REAL, num_steps=2)
    if version:
        record.header.model.CopyFrom(common_pb2.ModelRef(name="grasp_success", version=version))
    record.header.started_at.GetCurrentTime()
    record.outcome.result = (
        common_pb2.GRASP_RESULT_SUCCESS if success else common_pb2.GRASP_RESULT_FAILURE
    )
    return record


@pytest.fixture
def store(tmp_path):
    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))
    channel, stub = client.connect(server.address)
    with channel:
        yield stub
    server.stop(grace_s=0)


def test_the_canary_share_keeps_an_arm_on_stable():
    arms = ["kuka-01", "kuka-02", "kuka-03", "kuka-04"]
    assert flywheel.canary_share(arms, 2) == {
        "kuka-01": "stable",
        "kuka-02": "stable",
        "kuka-03": "canary",
        "kuka-04": "canary",
    }
    assert set(flywheel.canary_share(arms, 0).values()) == {"stable"}
    with pytest.raises(ValueError, match="at least one arm must stay on stable"):
        flywheel.canary_share(arms, 4)


def test_grasps_per_version_and_the_report_come_from_the_store_and_registry(store, tmp_path):
    started = time.time() - 1
    base = tmp_path / "models"
    registry = Registry(base)
    for version in (1, 2):
        models.publish(base, version, bias=0.0)
    registry.set_label("grasp_success", 1, "stable", by="make-run", reason="version 1")
    registry.set_label("grasp_success", 2, "canary", by="run:r2", reason="gate passed")
    registry.set_label("grasp_success", 2, "stable", by="rollout", reason="not worse")
    # Random first tries 1/4, version 1 1/5, version 2 3/5, on two arms.
    outcomes = [(0, s) for s in (True, False, False, False)]
    outcomes += [(1, s) for s in (True, False, False, False, False)]
    outcomes += [(2, s) for s in (True, True, True, False, False)]
    for seed, (version, success) in enumerate(outcomes):
        robot = f"kuka-0{seed % 2 + 1}"
        client.write_episode(store, _episode(seed, version, success, robot))
    unlabeled = _episode(99, 2, True)
    unlabeled.outcome.result = common_pb2.GRASP_RESULT_ABORTED
    client.write_episode(store, unlabeled)

    grasps = flywheel.real_grasps(store, started)
    assert {v: (r.successes, r.episodes) for v, r in grasps.items()} == {
        RANDOM: (1, 4),
        1: (1, 5),
        2: (3, 5),
    }
    assert flywheel.real_grasps(store, time.time() + 60) == {}  # nothing after the window

    changes = [
        trainer_pb2.LabelChange(
            label=e["label"], version=e["version"], previous=e.get("previous") or 0,
            by=e["by"], reason=e["reason"],
        )
        for e in registry.history("grasp_success")
    ]  # fmt: skip
    for change, entry in zip(changes, registry.history("grasp_success"), strict=True):
        change.time.FromJsonString(entry["time"].replace("+00:00", "Z"))
    rows = report.version_rows(grasps, registry, "grasp_success", changes, started)
    assert [row.version for row in rows] == [RANDOM, 1, 2]
    assert rows[2].grasps.successes == 3 and rows[2].grasps.low < 0.6 < rows[2].grasps.high
    assert any(e.startswith("stable at") and "rollout: not worse" in e for e in rows[2].events)
    table = report.versions_table(rows)
    assert "| random | - | - | - | 1/4 | 25.0% [" in table
    assert "| v2 |" in table and "3/5 | 60.0% [23.1%, 88.2%] |" in table
    decisions = report.decisions_list(changes, started)
    assert "stable -> v2 (was v1) by rollout: not worse" in decisions
    assert rows[2].as_dict()["grasps"]["episodes"] == 5

    plot = tmp_path / "success.png"
    report.flywheel_plot(flywheel.list_real(store, started), changes, started, plot)
    assert plot.stat().st_size > 10_000


def test_the_status_table_shows_versions_arms_and_runs():
    snapshot = Snapshot(
        elapsed_s=754,
        labels={"stable": 2, "canary": 3},
        grasps={RANDOM: wilson(1, 4), 2: wilson(30, 100)},
        arms=[
            ArmState("kuka-01", "stable", "running", 2, 50, 15),
            ArmState("kuka-03", "canary", "running", 3, 10, 4),
        ],
        runs=[
            trainer_pb2.Run(
                run_id="run-b",
                state=trainer_pb2.RUN_STATE_RUNNING,
                step=300,
                total_steps=1500,
                spec=trainer_pb2.RunSpec(recipe=trainer_pb2.RECIPE_NAIVE_MIX),
            ),
            trainer_pb2.Run(
                run_id="run-a",
                state=trainer_pb2.RUN_STATE_SUCCEEDED,
                spec=trainer_pb2.RunSpec(recipe=trainer_pb2.RECIPE_NAIVE_MIX),
                message="published grasp_success:3",
            ),
        ],
    )
    table = flywheel.status_table(snapshot)
    assert table.splitlines()[0] == "--- flywheel 12:34 ---"
    assert "v2       stable            100  30.0% [" in table
    assert "v3       canary              0  -" in table
    assert "random   -                   4  25.0% [" in table
    assert "kuka-03 canary=v3 running 4/10" in table
    assert "run run-b NAIVE_MIX running 300/1500 steps" in table
    assert "last run run-a NAIVE_MIX succeeded: published grasp_success:3" in table


def test_only_automatic_runs_that_ended_count_towards_until_runs():
    def run(state: int, by: str = "auto-retrain") -> trainer_pb2.Run:
        return trainer_pb2.Run(state=state, submitted_by=by)

    S = trainer_pb2
    snapshot = Snapshot(
        elapsed_s=60,
        labels={},
        grasps={},
        arms=[],
        runs=[
            run(S.RUN_STATE_SUCCEEDED, by="make-run"),  # version 1: not automatic
            run(S.RUN_STATE_REJECTED),
            run(S.RUN_STATE_FAILED),
            run(S.RUN_STATE_VALIDATING),  # still deciding
            run(S.RUN_STATE_RUNNING),
            run(S.RUN_STATE_QUEUED),
        ],
    )
    assert flywheel.automatic_runs_ended(snapshot) == 2
    # The status table shows the validating run in flight too, beside the running and queued.
    in_flight = [
        line for line in flywheel.status_table(snapshot).splitlines() if line.startswith("  run ")
    ]
    assert [line.split()[-3] for line in in_flight] == ["validating", "running", "queued"]
