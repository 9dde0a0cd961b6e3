"""The rollout decides on the arms' own grasps: a worse canary is rolled back, a better one
promoted, each decision recorded with its numbers (label history, API, CLI, metrics)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from graspfleet.v1 import common_pb2, trainer_pb2
from models.scoring import wilson
from services.trainer.rollout import PROMOTE, ROLLBACK, WAIT, decide
from tests.trainer.conftest import AUTH, REAL, episode, fill, trainer_stub, wait_for

NAME = "grasp_success"
RULES = {
    "margin": 0.05,
    "confidence": 0.95,
    "min_grasps": 6,
    "max_grasps": 50,
    "waited_s": 0.0,
    "max_wait_s": 3600.0,
}


def _decide(canary: tuple[int, int], stable: tuple[int, int] | None, **rules) -> str:
    other = None if stable is None else wilson(*stable)
    return decide(wilson(*canary), other, **{**RULES, **rules}).action


def test_the_decision_waits_for_the_minimum_then_follows_the_evidence():
    assert _decide((5, 5), (1, 6)) == WAIT  # the canary's minimum sample
    assert _decide((6, 6), (1, 5)) == WAIT  # stable's, over the same period
    assert _decide((6, 6), (3, 6)) == PROMOTE  # P(not worse by 5 points) = 0.979
    assert _decide((0, 6), (5, 6)) == ROLLBACK  # P(worse) = 0.998
    assert _decide((3, 6), (3, 6)) == WAIT  # undecided...
    assert _decide((3, 6), (3, 6), waited_s=3600.0) == ROLLBACK  # ...until the maximum wait
    assert _decide((25, 50), (25, 50)) == ROLLBACK  # or the maximum number of grasps
    assert _decide((0, 3), (5, 6), waited_s=3600.0) == ROLLBACK  # too few grasps in time
    assert _decide((6, 6), None) == PROMOTE and _decide((5, 5), None) == WAIT  # no stable
    # A tiny but certain loss rolls back even inside the margin: the arms' safety first.
    assert _decide((4800, 10000), (5000, 10000), max_grasps=20000) == ROLLBACK


def _labels(stub) -> dict[str, int]:
    versions = stub.ListModelVersions(trainer_pb2.ListModelVersionsRequest(name=NAME)).versions
    return {label: v.version for v in versions for label in v.labels}


def _count(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_worse_canary_is_rolled_back_and_a_better_one_promoted(
    start_trainer, store_client, tmp_path, capsys
):
    from services import cli

    for version in (1, 2, 3):
        (tmp_path / "models" / NAME / str(version)).mkdir(parents=True)
    server = start_trainer(rollout_interval_s=0.1, rollout_min_grasps=6, rollout_max_grasps=50)
    channel, stub = trainer_stub(server)
    ref = {v: common_pb2.ModelRef(name=NAME, version=v) for v in (1, 2, 3)}

    def label(version: int, name: str) -> None:
        request = trainer_pb2.SetVersionLabelRequest(name=NAME, version=version, label=name)
        stub.SetVersionLabel(request, metadata=AUTH)

    rollbacks = _count("graspfleet_trainer_rollout_decisions_total", model=NAME, decision=ROLLBACK)
    with channel:
        label(1, "stable")
        label(2, "canary")
        # Version 2 (say, trained on shuffled labels) fails every grasp; stable succeeds 5 of 6.
        fill(
            store_client, [episode(400 + i, REAL, False, model=ref[2], now=True) for i in range(6)]
        )
        fill(
            store_client, [episode(410 + i, REAL, i > 0, model=ref[1], now=True) for i in range(6)]
        )
        wait_for(lambda: _labels(stub).get("canary") == 1, 10, "the rollback of canary 2")
        assert _labels(stub) == {"stable": 1, "canary": 1}  # the canary arms run stable again
        changes = stub.ListLabelChanges(
            trainer_pb2.ListLabelChangesRequest(name=NAME, label="canary")
        ).changes
        back = changes[-1]
        assert (back.by, back.version, back.previous) == ("rollout", 1, 2)
        assert "canary 2 rolled back" in back.reason and "shown worse" in back.reason
        assert "P(worse) = 0.998" in back.reason and back.time.seconds > 0
        decisions = "graspfleet_trainer_rollout_decisions_total"
        wait_for(  # counted just after the label moves
            lambda: _count(decisions, model=NAME, decision=ROLLBACK) == rollbacks + 1, 10, "count"
        )

        # Version 3 grasps every time; stable 3 of 6 over the same period (its earlier
        # 5 of 6 does not count): promoted.
        label(3, "canary")
        fill(store_client, [episode(420 + i, REAL, True, model=ref[3], now=True) for i in range(6)])
        fill(
            store_client, [episode(430 + i, REAL, i < 3, model=ref[1], now=True) for i in range(6)]
        )
        wait_for(lambda: _labels(stub).get("stable") == 3, 10, "the promotion of canary 3")
        (promoted,) = stub.ListLabelChanges(
            trainer_pb2.ListLabelChangesRequest(name=NAME, label="stable")
        ).changes[-1:]
        assert promoted.by == "rollout" and "stable 3/6, 50.0% [18.8%, 81.2%]" in promoted.reason
        probability = "graspfleet_trainer_rollout_not_worse_probability"
        assert _count(probability, model=NAME) == pytest.approx(0.979, abs=0.001)

        # Promoted, version 3 then fails 6 grasps of 6: against version 1's 8 of 12 while it
        # was stable, the watch behind GraspfleetPromotedBelowPredecessor is sure it is worse.
        fill(
            store_client, [episode(440 + i, REAL, False, model=ref[3], now=True) for i in range(6)]
        )
        worse = "graspfleet_trainer_stable_worse_probability"
        wait_for(lambda: _count(worse, model=NAME) > 0.95, 10, "the stable watch")
        ratio = "graspfleet_trainer_stable_success_ratio"
        assert _count(ratio, model=NAME, role="predecessor") == pytest.approx(8 / 12)
        assert _count(ratio, model=NAME, role="stable") == 0.0

    assert cli.main(["models", "history", "--trainer", server.address]) == 0
    shown = capsys.readouterr().out
    assert "rolled back" in shown and "rollout" in shown and "SetVersionLabel" in shown
