"""Tiny real trainings end to end through the gRPC API on the local backend.

Submit -> WatchRun -> SUCCEEDED -> version 1 published as canary; promotion by
hand; a gate rejection against a stable model; a second publication promoted
automatically from canary grasps in the store; rollback.
"""

from __future__ import annotations

import json

import grpc
import pytest
from prometheus_client import REGISTRY

from graspfleet.v1 import common_pb2, trainer_pb2
from models import registry
from models.registry import HISTORY_FILE, LABELS_FILE
from tests.trainer.conftest import (
    AUTH,
    REAL,
    TOKEN,
    episode,
    fill,
    tiny_spec,
    trainer_stub,
    wait_for,
    watch,
)

NAME = "grasp_success"
S = trainer_pb2


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, store):
    from services.trainer.server import create_server
    from tests.trainer.conftest import trainer_config

    tmp = tmp_path_factory.mktemp("trainer")
    server = create_server(trainer_config(tmp, store, rollout_interval_s=0.2, rollout_min_grasps=6))
    channel, stub = trainer_stub(server)
    yield server, stub, tmp / "models"
    channel.close()
    server.stop(grace_s=0)


@pytest.fixture(scope="module")
def first_run(trainer):
    _, stub, _ = trainer
    spec = tiny_spec(S.RECIPE_DANN)
    # The scene loss learns from the sim masks; the real episodes have none.
    spec.params.weights["scene"] = 1.0
    run = stub.SubmitRun(S.SubmitRunRequest(spec=spec), metadata=AUTH)
    return run, watch(stub, run.run_id)


def test_a_run_streams_its_progress_and_publishes_a_canary(trainer, first_run):
    _, stub, models = trainer
    submitted, events = first_run
    assert submitted.state == S.RUN_STATE_QUEUED and submitted.submitted_by == "tester"
    assert submitted.spec.gate.enabled and submitted.spec.model_name == NAME
    states = [e.run.state for e in events]
    # A watch starts with the run's state when it attaches: QUEUED, or RUNNING when the
    # supervisor started the job first. After that, states only move forward.
    lifecycle = [S.RUN_STATE_QUEUED, S.RUN_STATE_RUNNING, S.RUN_STATE_VALIDATING]
    lifecycle.append(S.RUN_STATE_SUCCEEDED)
    shown = [(S.RunState.Name(e.run.state), e.log_line) for e in events]
    assert states[0] in lifecycle[:2] and states[-1] == S.RUN_STATE_SUCCEEDED, shown
    assert [lifecycle.index(s) for s in states] == sorted(lifecycle.index(s) for s in states), shown
    assert S.RUN_STATE_RUNNING in states and S.RUN_STATE_VALIDATING in states
    steps = [e.run.step for e in events if e.run.state == S.RUN_STATE_RUNNING]
    assert steps == sorted(steps) and max(steps) > 0
    run = events[-1].run
    assert run.published == common_pb2.ModelRef(name=NAME, version=1, label="canary")
    assert 0 <= run.metrics["validation_accuracy"] <= 1 and "gate_candidate_auc" in run.metrics
    assert "no stable version" in run.message and run.job.startswith("local:")
    assert run.finished_at.ToNanoseconds() >= run.started_at.ToNanoseconds() > 0

    metadata = registry.read_metadata(models / NAME / "1")
    assert metadata["trainer"]["run_id"] == run.run_id and metadata["model"]["dann"]
    assert metadata["model"]["scene_head"] and run.metrics["scene_loss"] > 0
    assert metadata["trainer"]["recipe"] == "RECIPE_DANN"
    assert json.loads((models / NAME / LABELS_FILE).read_text()) == {"canary": 1}
    (version,) = stub.ListModelVersions(S.ListModelVersionsRequest(name=NAME)).versions
    assert (version.version, list(version.labels), version.run_id) == (1, ["canary"], run.run_id)
    assert version.recipe == S.RECIPE_DANN and version.image_size.width == 64
    assert version.metrics["validation_accuracy"] == run.metrics["validation_accuracy"]
    assert stub.GetRun(S.GetRunRequest(run_id=run.run_id)) == run


@pytest.fixture(scope="module")
def stable_v1(trainer, first_run):
    _, stub, _ = trainer
    return stub.SetVersionLabel(
        S.SetVersionLabelRequest(name=NAME, version=1, label="stable"), metadata=AUTH
    )


def test_promotion_by_hand_moves_the_label(trainer, stable_v1):
    _, stub, models = trainer
    assert stable_v1.version == 1 and list(stable_v1.labels) == ["canary", "stable"]
    assert json.loads((models / NAME / LABELS_FILE).read_text()) == {"canary": 1, "stable": 1}
    last = json.loads((models / NAME / HISTORY_FILE).read_text().splitlines()[-1])
    assert (last["label"], last["version"], last["by"]) == ("stable", 1, "tester")
    with pytest.raises(grpc.RpcError) as missing:
        stub.SetVersionLabel(
            S.SetVersionLabelRequest(name=NAME, version=7, label="stable"), metadata=AUTH
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_cli_submits_a_run_the_gate_rejects_then_lists_and_promotes(trainer, stable_v1, capsys):
    from services import cli

    server, stub, models = trainer
    address = ["--trainer", server.address]
    rejections = _count("graspfleet_trainer_gate_rejections_total", model=NAME)
    # The researcher's path: submit and watch to the end. max_regression -1: the candidate
    # must be 100 points more accurate than stable on the same held-out samples, which no
    # model can be unless stable scores 0 and it scores 1; so it is rejected, no label moves.
    submit = ["train", "submit", "--recipe", "naive-mix", "--steps", "24", "--batch-size", "16"]
    submit += ["--learning-rate", "0.003", "--seed", "1"]
    submit += ["--max-regression", "-1", "--validation-fraction", "0.25", "--watch"]
    assert cli.main([*submit, *address, "--token", TOKEN]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "QUEUED" in out[0] and "RUNNING" in out[2] and "step 24/24" in "\n".join(out)
    assert "REJECTED" in out[-2] and "exceeds max_regression" in out[-1]
    (final,) = stub.ListRuns(S.ListRunsRequest(state=S.RUN_STATE_REJECTED)).runs
    assert final.spec.recipe == S.RECIPE_NAIVE_MIX
    assert (
        "vs stable version 1" in final.message and "exceeds max_regression -1.0000" in final.message
    )
    assert final.metrics["gate_stable_version"] == 1
    assert final.metrics["gate_samples"] == 20  # 5 held-out episodes x 4 steps, for both models
    assert not final.HasField("published")
    assert registry.versions(models / NAME) == [1]
    assert _count("graspfleet_trainer_gate_rejections_total", model=NAME) == rejections + 1
    # --refiner reaches the trainer, which says this recipe applies no generator.
    assert cli.main([*submit[:-1], "--refiner", "3", *address, "--token", TOKEN]) == 1
    refused = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in refused and "applies no generator" in refused

    assert cli.main(["train", "ls", *address]) == 0
    listing = capsys.readouterr().out
    assert "SUCCEEDED" in listing and "REJECTED" in listing and "grasp_success:1" in listing
    assert cli.main(["train", "ls", *address, "--state", "rejected"]) == 0
    assert "SUCCEEDED" not in capsys.readouterr().out
    assert cli.main(["models", "ls", *address]) == 0
    assert "stable" in capsys.readouterr().out
    promote = ["models", "promote", "1", "--label", "canary", *address]
    assert cli.main([*promote, "--token", "wrong"]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert cli.main([*promote, "--token", TOKEN]) == 0
    assert "grasp_success:1 is now canary" in capsys.readouterr().out


def test_a_second_version_is_promoted_automatically_then_rolled_back(
    trainer, stable_v1, store_client
):
    _, stub, models = trainer
    spec = tiny_spec(S.RECIPE_REAL_ONLY, enabled=True, max_regression=1.0)
    run = stub.SubmitRun(S.SubmitRunRequest(spec=spec), metadata=AUTH)
    final = watch(stub, run.run_id)[-1].run
    assert final.state == S.RUN_STATE_SUCCEEDED, final.message
    assert final.published.version == 2 and "within max_regression" in final.message
    labels = json.loads((models / NAME / LABELS_FILE).read_text())
    assert labels == {"canary": 2, "stable": 1}

    promotions = _count("graspfleet_trainer_auto_promotions_total", model=NAME)
    # The fleet grasps with both since version 2 became canary: it succeeds 6 of 6 times,
    # stable 3 of 6 (what stable did before does not count).
    canary, stable = (common_pb2.ModelRef(name=NAME, version=v) for v in (2, 1))
    fill(
        store_client, [episode(300 + i, REAL, i % 2 == 0, model=stable, now=True) for i in range(6)]
    )
    fill(store_client, [episode(200 + i, REAL, True, model=canary, now=True) for i in range(6)])

    def promoted():
        versions = stub.ListModelVersions(S.ListModelVersionsRequest(name=NAME)).versions
        return "stable" in versions[1].labels

    wait_for(promoted, 10, "the rollout loop to promote version 2")
    # The loop counts the promotion just after it moves the label.
    promoted_count = "graspfleet_trainer_auto_promotions_total"
    wait_for(lambda: _count(promoted_count, model=NAME) == promotions + 1, 10, "the count")
    last = json.loads((models / NAME / HISTORY_FILE).read_text().splitlines()[-1])
    assert last["by"] == "rollout" and "canary 6/6, 100.0% [61.0%, 100.0%]" in last["reason"]
    assert "stable 3/6, 50.0% [18.8%, 81.2%]" in last["reason"] and "not worse" in last["reason"]

    back = stub.RollbackVersionLabel(
        S.RollbackVersionLabelRequest(name=NAME, label="stable"), metadata=AUTH
    )
    assert back.version == 1 and "stable" in back.labels
    assert json.loads((models / NAME / LABELS_FILE).read_text()) == {"canary": 2, "stable": 1}
    # Rolled back once, version 2 is not promoted again by the loop, however well it grasps.
    fill(store_client, [episode(210 + i, REAL, True, model=canary, now=True) for i in range(6)])
    with pytest.raises(AssertionError):
        wait_for(promoted, 1.0)
    with pytest.raises(grpc.RpcError) as nothing_before:
        stub.RollbackVersionLabel(
            S.RollbackVersionLabelRequest(name=NAME, label="stable"), metadata=AUTH
        )
    assert nothing_before.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no version before 1" in nothing_before.value.details()


def _count(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_metrics_count_runs_and_publications(trainer, first_run):
    assert _count("graspfleet_trainer_published_versions_total", model=NAME) >= 1
    assert _count("graspfleet_trainer_runs", state="SUCCEEDED") >= 1
    duration = "graspfleet_trainer_run_duration_seconds_count"
    assert _count(duration, recipe="DANN", state="SUCCEEDED") >= 1
