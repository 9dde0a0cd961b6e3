"""Evaluations through the trainer's API: a run of recipe EVALUATION plays real episodes.

A store, a predictor serving a test model (version 1), the planner and a
sim-farm run in-process; the trainer starts the evaluation's job as a real
process on the local backend, which plays every contender's scenes on the farm.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from graspfleet.v1 import (
    common_pb2,
    episode_store_pb2,
    sim_farm_pb2,
    sim_farm_pb2_grpc,
    trainer_pb2,
)
from models.episodes import selection
from services.common.server import ServiceServer
from services.episode_store import client
from services.trainer import evaluation
from services.trainer.backends import LocalBackend
from services.trainer.client import TERMINAL
from services.trainer.job import files
from services.trainer.job import main as trainer_job
from services.trainer.server import create_server
from tests.fixtures.planning_fleet import planning_fleet
from tests.trainer.conftest import AUTH, TOKEN, trainer_config, trainer_stub, wait_for, watch

ARM = Path(__file__).parents[2] / "robots" / "evaluation" / "proxy-real-test.yaml"
SCENES = 2
S = trainer_pb2


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """Store, predictor (test model version 1), planner and a two-worker sim-farm."""
    with planning_fleet(tmp_path_factory.mktemp("evaluation-fleet")) as fleet:
        yield SimpleNamespace(store=fleet.store, farm=fleet.start_farm(), models=fleet.models)


@pytest.fixture
def start_trainer(tmp_path, fleet) -> Iterator[Callable[..., ServiceServer]]:
    """Trainers on the fleet's store and farm, sharing the predictor's model base."""
    servers: list[ServiceServer] = []

    def start(**overrides) -> ServiceServer:
        settings = {"model_base": str(fleet.models), "sim_farm_address": fleet.farm.address}
        server = create_server(trainer_config(tmp_path, fleet.store, **{**settings, **overrides}))
        servers.append(server)
        return server

    yield start
    for server in servers:
        channel, stub = trainer_stub(server)
        with channel:
            for run in stub.ListRuns(S.ListRunsRequest(page_size=500), timeout=5).runs:
                if run.state not in TERMINAL:
                    stub.CancelRun(S.CancelRunRequest(run_id=run.run_id), metadata=AUTH)
                if run.job.startswith("local:"):
                    LocalBackend().cancel(run.job)
        server.stop(grace_s=0)


def evaluation_spec(**fields) -> S.RunSpec:
    """A cem contender on version 1 and the random floor, on SCENES scenes of the test arm."""
    request = S.EvaluationRequest(
        arm_config_yaml=ARM.read_text(),
        scenes=SCENES,
        seed=5,
        shards=2,
        contenders=[
            S.EvaluationContender(
                name="model-1", policy="cem", model=common_pb2.ModelRef(version=1)
            ),
            S.EvaluationContender(name="random", policy="random"),
        ],
    )
    for key, value in fields.items():
        setattr(request, key, value)
    return S.RunSpec(recipe=S.RECIPE_EVALUATION, evaluation=request)


def _episodes(store: ServiceServer, collection_id: str) -> list:
    channel, stub = client.connect(store.address)
    with channel:
        flt = episode_store_pb2.EpisodeFilter(collection_id=collection_id)
        return list(client.list_all(stub, flt))


def test_an_evaluation_plays_its_scenes_on_the_farm_and_reports_every_rate(
    fleet, start_trainer, tmp_path, capsys, monkeypatch
):
    from services import cli

    server = start_trainer()
    address = ["--trainer", server.address]
    submit = ["train", "evaluate", "--arm", str(ARM), "--scenes", str(SCENES), "--seed", "5"]
    contenders = ["--contender", "model-1=cem:stable", "--contender", "random"]
    assert cli.main([*submit, *contenders, "--run-id", "eval-1", *address, "--token", TOKEN]) == 0
    assert capsys.readouterr().out.startswith("eval-1 QUEUED: queued: evaluation of model-1")

    channel, stub = trainer_stub(server)
    with channel:
        queued = stub.GetRun(S.GetRunRequest(run_id="eval-1"))
        # The label was resolved at submission: the stored run names the version it plays.
        model = queued.spec.evaluation.contenders[0].model
        assert (model.name, model.version, model.label) == ("grasp_success", 1, "stable")
        assert queued.total_steps == 2 * SCENES and queued.spec.evaluation.shards == 2
        events = watch(stub, "eval-1", timeout_s=120)
    run = events[-1].run
    assert run.state == S.RUN_STATE_SUCCEEDED, run.message
    # Progress in episodes (both contenders' scenes), as a training reports its steps.
    assert any(e.log_line.startswith(f"episodes {2 * SCENES}/{2 * SCENES}") for e in events)
    assert run.step == run.total_steps == 2 * SCENES

    for name in ("model-1", "random"):
        m = run.metrics
        assert m[f"{name}.episodes"] == SCENES
        assert 0 <= m[f"{name}.low"] <= m[f"{name}.success_rate"] <= m[f"{name}.high"] <= 1
        assert m[f"{name}.successes"] == m[f"{name}.success_rate"] * SCENES
    difference = run.metrics["model-1/random.difference"]
    assert run.metrics["model-1/random.low"] <= difference <= run.metrics["model-1/random.high"]
    # Nothing published, no label moved, not even the registry's first-publication pin.
    assert not run.published.name and not (fleet.models / "grasp_success/labels.json").exists()

    run_dir = tmp_path / "trainer" / "runs" / "eval-1"
    report = json.loads((run_dir / files.REPORT_FILE).read_text())
    assert str(run_dir / files.REPORT_FILE) in run.message
    assert report["evaluation_id"] == "eval-1" and report["arm"] == "eval-proxy-real"
    assert [r["name"] for r in report["contenders"]] == ["model-1", "random"]
    assert report["paired"][0]["scenes"] == SCENES

    cem, rnd = _episodes(fleet.store, "eval-1.model-1"), _episodes(fleet.store, "eval-1.random")
    assert len(cem) == len(rnd) == SCENES
    assert {e.seed for e in cem} == {e.seed for e in rnd}
    assert all(e.model.version == 1 for e in cem)
    assert all(selection.is_evaluation(e) for e in cem + rnd) and not selection.labeled(cem + rnd)

    # The job run again for the same run folder plays nothing again and reports the same.
    monkeypatch.setenv(evaluation.FARM_ENV, fleet.farm.address)
    monkeypatch.setenv(evaluation.STORE_ENV, fleet.store.address)
    assert trainer_job.run(run_dir) == 0
    assert files.read_result(run_dir).metrics == dict(run.metrics)
    assert len(_episodes(fleet.store, "eval-1.random")) == SCENES

    assert cli.main(["train", "get", "eval-1", *address]) == 0
    shown = capsys.readouterr().out
    assert "eval-1 SUCCEEDED EVALUATION" in shown and "model-1.success_rate" in shown


def _contender(i: int, **fields) -> Callable[[S.RunSpec], None]:
    def change(spec: S.RunSpec) -> None:
        contender = spec.evaluation.contenders[i]
        for key, value in fields.items():
            if isinstance(value, common_pb2.ModelRef):
                getattr(contender, key).CopyFrom(value)
            else:
                setattr(contender, key, value)

    return change


def _set(**fields) -> Callable[[S.RunSpec], None]:
    return lambda spec: [setattr(spec.evaluation, k, v) for k, v in fields.items()]


REF = common_pb2.ModelRef
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
REFUSED = [
    ("unknown version", _contender(0, model=REF(version=9)), NOT_FOUND, "has no version 9"),
    ("unknown label", _contender(0, model=REF(label="beta")), NOT_FOUND, "labelled 'beta'"),
    ("no version", _contender(0, model=REF(name="grasp_success")), INVALID, "name a version"),
    (
        "cem without a model",
        lambda s: s.evaluation.contenders[0].ClearField("model"),
        INVALID,
        "cem needs a model version",
    ),
    ("random with a model", _contender(1, model=REF(version=1)), INVALID, "takes no model"),
    ("unknown policy", _contender(1, policy="greedy"), INVALID, "policy 'greedy'"),
    ("no policy", _contender(1, policy=""), INVALID, "policy ''"),
    ("bad name", _contender(1, name="../x"), INVALID, "use 1-63 of [A-Za-z0-9._-]"),
    ("duplicate names", _contender(1, name="model-1"), INVALID, "'model-1' is taken"),
    ("another model", _contender(0, model=REF(name="other", version=1)), INVALID, "plans with"),
    ("unknown rcan", _contender(0, rcan=REF(version=2)), NOT_FOUND, "'rcan' has no version 2"),
    ("no scenes", _set(scenes=0), INVALID, "evaluation.scenes=0"),
    ("too many scenes", _set(scenes=10**6), INVALID, "scenes=1000000: ask for 1 to"),
    ("more shards than scenes", _set(shards=3), INVALID, "evaluation.shards=3"),
    ("no arm", _set(arm_config_yaml=""), INVALID, "arm_config_yaml is required"),
    ("arm not YAML", _set(arm_config_yaml="id: [kuka"), INVALID, "not valid YAML"),
    ("arm of no driver", _set(arm_config_yaml="id: x\ndriver: hw9\n"), INVALID, "'hw9' is unk"),
    ("arm of odd types", _set(arm_config_yaml="id: x\ndriver: [1]\n"), INVALID, "not an arm"),
    ("no contenders", lambda s: s.evaluation.ClearField("contenders"), INVALID, "give 1 to 32"),
    ("training params", lambda s: setattr(s.params, "steps", 5), INVALID, "trains nothing"),
    ("no request", lambda s: s.ClearField("evaluation"), INVALID, "needs evaluation"),
    ("on a training", lambda s: setattr(s, "recipe", S.RECIPE_DANN), INVALID, "recipe EVALUATION"),
]


@pytest.fixture
def trainer_stub_for(start_trainer):
    channel, stub = trainer_stub(start_trainer())
    with channel:
        yield stub


@pytest.mark.parametrize(
    ("change", "code", "fragment"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_bad_evaluation_requests_are_refused_with_the_reason(
    trainer_stub_for, change, code, fragment
):
    spec = evaluation_spec()
    change(spec)
    with pytest.raises(grpc.RpcError) as refused:
        trainer_stub_for.SubmitRun(S.SubmitRunRequest(spec=spec), metadata=AUTH, timeout=30)
    assert refused.value.code() == code, refused.value.details()
    assert fragment in refused.value.details()


def test_a_long_run_id_and_contender_name_that_the_farm_could_not_take_are_refused(
    trainer_stub_for,
):
    spec = evaluation_spec()
    spec.evaluation.contenders[1].name = "r" * 63
    with pytest.raises(grpc.RpcError) as refused:
        trainer_stub_for.SubmitRun(
            S.SubmitRunRequest(spec=spec, run_id="e" * 40), metadata=AUTH, timeout=30
        )
    assert refused.value.code() == INVALID and "over 100 characters" in refused.value.details()


def test_a_trainer_without_a_sim_farm_refuses_evaluations(start_trainer):
    channel, stub = trainer_stub(start_trainer(sim_farm_address=""))
    with channel, pytest.raises(grpc.RpcError) as refused:
        stub.SubmitRun(S.SubmitRunRequest(spec=evaluation_spec()), metadata=AUTH, timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--sim-farm-address" in refused.value.details()


def test_cancelling_an_evaluation_stops_its_collection_on_the_farm(fleet, start_trainer):
    spec = evaluation_spec(scenes=40, shards=1)
    spec.evaluation.ClearField("contenders")
    spec.evaluation.contenders.add(name="random", policy="random")
    channel, stub = trainer_stub(start_trainer())
    with (
        channel,
        grpc.insecure_channel(fleet.farm.address) as farm_channel,
    ):
        farm = sim_farm_pb2_grpc.SimFarmStub(farm_channel)
        get = sim_farm_pb2.GetCollectionRequest(collection_id="eval-2.random")

        def playing() -> bool:
            try:
                return farm.GetCollection(get, timeout=5).episodes_done >= 1
            except grpc.RpcError:
                return False

        stub.SubmitRun(S.SubmitRunRequest(spec=spec, run_id="eval-2"), metadata=AUTH, timeout=30)
        wait_for(playing, timeout_s=60, what="the evaluation's first episode")
        cancelled = stub.CancelRun(S.CancelRunRequest(run_id="eval-2"), metadata=AUTH, timeout=30)
        assert cancelled.state == S.RUN_STATE_CANCELLED
        stopped = sim_farm_pb2.COLLECTION_STATE_STOPPED
        wait_for(lambda: farm.GetCollection(get, timeout=5).state == stopped, timeout_s=60)
    assert 1 <= len(_episodes(fleet.store, "eval-2.random")) < 40
