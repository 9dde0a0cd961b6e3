"""Refused requests: bad RunSpecs, missing data, missing refiner, authentication; idempotency."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from graspfleet.v1 import common_pb2
from graspfleet.v1 import trainer_pb2 as S
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from tests.trainer.conftest import AUTH, REAL, TOKEN, episode, tiny_spec, trainer_stub


@pytest.fixture
def stub(start_trainer):
    channel, stub = trainer_stub(start_trainer(max_concurrent_runs=1))
    with channel:
        yield stub


def _spec(edit) -> S.RunSpec:
    spec = tiny_spec(S.RECIPE_DANN)
    edit(spec)
    return spec


def _set(path: str, value):
    def edit(spec):
        *parents, leaf = path.split(".")
        target = spec
        for name in parents:
            target = getattr(target, name)
        if isinstance(value, list):
            getattr(target, leaf).extend(value)
        else:
            setattr(target, leaf, value)

    return edit


INVALID = {
    "no recipe": (_set("recipe", S.RECIPE_UNSPECIFIED), "recipe is required"),
    "unknown recipe": (_set("recipe", 99), "recipe=99 is not a known recipe"),
    "absurd steps": (_set("params.steps", 10**9), "params.steps=1000000000 exceeds the limit"),
    "batch of one": (_set("params.batch_size", 1), "params.batch_size=1 must be between 2"),
    "huge batch": (_set("params.batch_size", 10**6), "params.batch_size=1000000"),
    "negative rate": (_set("params.learning_rate", -0.1), "params.learning_rate=-0.1"),
    "NaN rate": (_set("params.learning_rate", float("nan")), "is not a finite number"),
    "rate above one": (_set("params.learning_rate", 5.0), "must be in (0, 1]"),
    "unknown profile": (_set("params.profile", "huge"), "params.profile 'huge' is unknown"),
    "unknown weight": (lambda s: s.params.weights.update(lambda_g=1.0), "is not a weight"),
    "negative fraction": (_set("data.real_fraction", -0.5), "data.real_fraction=-0.5"),
    "fraction above one": (_set("data.real_fraction", 1.5), "data.real_fraction=1.5"),
    "all held out": (_set("data.validation_fraction", 1.0), "data.validation_fraction=1.0"),
    "amount and fraction": (
        lambda s: (_set("data.max_real_episodes", 5)(s), _set("data.real_fraction", 0.5)(s)),
        "not both",
    ),
    "absurd regression": (_set("gate.max_regression", 3.0), "gate.max_regression=3.0"),
    "bad model name": (_set("model_name", "../etc"), "model_name '../etc'"),
    "unknown backend": (_set("backend", "slurm"), "backend 'slurm' is unknown"),
    "unknown robots": (_set("data.robot_ids", ["kuka-99"]), "no labeled real episodes match"),
    "no such sim objects": (_set("data.object_set", "shapenet"), "no labeled simulated episodes"),
    "sim field on real-only": (
        lambda s: (
            _set("recipe", S.RECIPE_REAL_ONLY)(s),
            _set("data.sim_randomization", common_pb2.RANDOMIZATION_VISUAL)(s),
        ),
        "selects simulated episodes",
    ),
    "scene loss on real-only": (
        lambda s: (_set("recipe", S.RECIPE_REAL_ONLY)(s), s.params.weights.update(scene=1.0)),
        "params.weights['scene'] is not a weight of REAL_ONLY",
    ),
    "negative scene loss": (
        lambda s: s.params.weights.update(scene=-1.0),
        "params.weights['scene'] must be in [0, 1000.0]",
    ),
    "real amount on sim-only": (
        lambda s: (_set("recipe", S.RECIPE_SIM_ONLY)(s), _set("data.max_real_episodes", 3)(s)),
        "trains on no real labels",
    ),
    "nothing held out": (
        lambda s: (
            _set("data.robot_ids", ["kuka-01"])(s),
            _set("data.validation_fraction", 0.01)(s),
        ),
        "no whole number of episodes is that share",
    ),
    "window backwards": (
        lambda s: (s.data.since.FromSeconds(2_000_000_000), s.data.until.FromSeconds(1)),
        "data.until must be after data.since",
    ),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_bad_run_specs_are_invalid_arguments_with_the_reason(stub, case):
    edit, reason = INVALID[case]
    with pytest.raises(grpc.RpcError) as refused:
        stub.SubmitRun(S.SubmitRunRequest(spec=_spec(edit)), metadata=AUTH)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert reason in refused.value.details()


def test_real_episodes_that_share_objects_are_refused_not_split_by_episode(start_trainer, tmp_path):
    # Every real episode shares a mug with the others: no split holds out unseen objects.
    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "linked"), grace_s=0))
    try:
        channel, store_stub = client.connect(store.address)
        with channel:
            for seed in range(12):
                record = episode(seed, REAL, seed % 2 == 0)
                record.header.object_ids.append("mug")
                client.write_episode(store_stub, record)
        trainer = start_trainer(
            max_concurrent_runs=1,
            store_address=store.address,
            store_data_dir=store.config.data_dir,
        )
        channel, stub = trainer_stub(trainer)
        spec = tiny_spec(S.RECIPE_REAL_ONLY)  # real episodes only: nothing else to refuse
        with channel, pytest.raises(grpc.RpcError) as refused:
            stub.SubmitRun(S.SubmitRunRequest(spec=spec), metadata=AUTH)
    finally:
        store.stop(grace_s=0)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details()
    assert "real validation split (data.validation_fraction=0.25)" in details
    assert "12 episodes by object" in details and "into 1 object group," in details
    assert "collect validation episodes on a disjoint object set" in details


@pytest.mark.parametrize(
    "recipe", [S.RECIPE_GRASPGAN_DANN_DBN, S.RECIPE_GRASPGAN_SIM_ONLY, S.RECIPE_RCAN]
)
def test_refiner_recipes_are_refused_until_their_generator_is_stable(stub, recipe):
    with pytest.raises(grpc.RpcError) as refused:
        stub.SubmitRun(S.SubmitRunRequest(spec=tiny_spec(recipe)), metadata=AUTH)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "refiner" in refused.value.details()


def test_an_unconfigured_backend_is_a_failed_precondition(stub):
    spec = _spec(_set("backend", "kubernetes"))
    with pytest.raises(grpc.RpcError) as refused:
        stub.SubmitRun(S.SubmitRunRequest(spec=spec), metadata=AUTH)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


MUTATIONS = {
    "SubmitRun": S.SubmitRunRequest(spec=tiny_spec(S.RECIPE_DANN)),
    "CancelRun": S.CancelRunRequest(run_id="whatever"),
    "SetVersionLabel": S.SetVersionLabelRequest(version=1, label="stable"),
    "RollbackVersionLabel": S.RollbackVersionLabelRequest(label="stable"),
}


@pytest.mark.parametrize("method", MUTATIONS)
@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ([], grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", f"Basic {TOKEN}")], grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", "Bearer not-the-token")], grpc.StatusCode.PERMISSION_DENIED),
    ],
    ids=["missing", "not-bearer", "wrong"],
)
def test_mutating_calls_need_the_bearer_token(stub, method, metadata, code):
    with pytest.raises(grpc.RpcError) as refused:
        getattr(stub, method)(MUTATIONS[method], metadata=metadata)
    assert refused.value.code() == code
    assert not stub.ListRuns(S.ListRunsRequest()).runs  # reads need no token; nothing happened


def test_an_empty_token_disables_authentication(start_trainer, caplog):
    channel, stub = trainer_stub(start_trainer(auth_token=""))
    with channel:
        with pytest.raises(grpc.RpcError) as missing:
            stub.CancelRun(S.CancelRunRequest(run_id="nope"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # past authentication
    assert "AUTHENTICATION DISABLED" in caplog.text


def test_submit_is_idempotent_on_run_id_and_list_pages_by_state(stub):
    request = S.SubmitRunRequest(spec=tiny_spec(S.RECIPE_REAL_ONLY), run_id="retry-me")
    first = stub.SubmitRun(request, metadata=AUTH)
    again = stub.SubmitRun(request, metadata=AUTH)
    assert again.run_id == "retry-me" and again.created_at == first.created_at
    other = S.SubmitRunRequest(spec=tiny_spec(S.RECIPE_DANN), run_id="retry-me")
    with pytest.raises(grpc.RpcError) as clash:
        stub.SubmitRun(other, metadata=AUTH)
    assert clash.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as bad_id:
        stub.SubmitRun(S.SubmitRunRequest(spec=request.spec, run_id="Bad_Id"), metadata=AUTH)
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    for run_id in ("page-1", "page-2"):
        stub.SubmitRun(S.SubmitRunRequest(spec=request.spec, run_id=run_id), metadata=AUTH)
    for run_id in ("retry-me", "page-1", "page-2"):
        stub.CancelRun(S.CancelRunRequest(run_id=run_id), metadata=AUTH)
    page = stub.ListRuns(S.ListRunsRequest(state=S.RUN_STATE_CANCELLED, page_size=2))
    assert [r.run_id for r in page.runs] == ["page-2", "page-1"] and page.next_page_token
    rest = stub.ListRuns(
        S.ListRunsRequest(state=S.RUN_STATE_CANCELLED, page_size=2, page_token=page.next_page_token)
    )
    assert [r.run_id for r in rest.runs] == ["retry-me"] and not rest.next_page_token
    assert not stub.ListRuns(S.ListRunsRequest(state=S.RUN_STATE_SUCCEEDED)).runs
    for call, request in (
        (stub.GetRun, S.GetRunRequest(run_id="nope")),
        (stub.ListRuns, S.ListRunsRequest(page_token="garbage")),
        (lambda r: list(stub.WatchRun(r)), S.WatchRunRequest(run_id="nope")),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call(request)
        assert refused.value.code() in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT,
        )


@pytest.mark.parametrize("name", ["../canary/gf", "/tmp/elsewhere", "a/b", "n" * 600, ".."])
def test_model_names_that_could_become_paths_are_refused(stub, tmp_path, name):
    for request in (
        S.SetVersionLabelRequest(name=name, version=1, label="stable"),
        S.RollbackVersionLabelRequest(name=name, label="stable"),
        S.ListModelVersionsRequest(name=name),
    ):
        method = type(request).__name__.removesuffix("Request")
        with pytest.raises(grpc.RpcError) as refused:
            getattr(stub, method)(request, metadata=AUTH)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "model name" in refused.value.details()
    assert not (tmp_path / "canary").exists() and not Path("/tmp/elsewhere").exists()
