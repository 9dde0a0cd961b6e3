"""The closed-loop evaluator over real services: paired scenes, evaluation tags, resume."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from graspfleet.v1 import episode_store_pb2, sim_farm_pb2, sim_farm_pb2_grpc
from models.episodes import dataset, selection
from services.common import upstream
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.evaluation import closed_loop
from services.evaluation.closed_loop import Contender, EvaluationSpec
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.server import create_server as create_farm
from tests.fixtures.planning_fleet import planning_fleet
from tests.fixtures.tls import make_certificate
from tests.fixtures.waiting import until

ARM = Path(__file__).parents[2] / "robots" / "evaluation" / "proxy-real-test.yaml"
SCENES = 4


@pytest.fixture
def services(tmp_path):
    """Store, predictor (one test model, version 1), planner; a farm factory on top."""
    with planning_fleet(tmp_path) as fleet:
        yield fleet.store, fleet.start_farm


def _episodes(store_address: str, collection_id: str) -> list:
    channel, stub = client.connect(store_address)
    with channel:
        return list(
            client.list_all(stub, episode_store_pb2.EpisodeFilter(collection_id=collection_id))
        )


def _x0(store_address: str, episode_id: str) -> bytes:
    channel, stub = client.connect(store_address)
    with channel:
        response = stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(episode_id=episode_id, include_steps=True)
        )
    return response.header.x0.data


def test_contenders_meet_the_same_scenes_tagged_as_evaluation_and_a_rerun_resumes(services):
    store, farm = services
    spec = EvaluationSpec.from_file("t1", ARM, scenes=SCENES, seed=11, shards=2)
    contenders = [Contender("model-1", "cem", 1), Contender("random", "random")]
    results = closed_loop.evaluate(farm().address, store.address, spec, contenders)

    by_name = {r.contender.name: r for r in results}
    assert set(by_name["model-1"].outcomes) == set(by_name["random"].outcomes)
    assert len(by_name["random"].outcomes) == SCENES
    for r in results:
        assert r.rate.episodes == SCENES and 0 <= r.rate.low <= r.rate.rate <= r.rate.high <= 1
    cem = {e.seed: e for e in _episodes(store.address, "t1.model-1")}
    rnd = {e.seed: e for e in _episodes(store.address, "t1.random")}
    for seed, episode in cem.items():
        # The same scene: the same objects of the real-test pool, and the very same x0.
        assert list(episode.object_ids) == list(rnd[seed].object_ids)
        assert all(o.startswith("real-test:") for o in episode.object_ids)
        assert _x0(store.address, episode.episode_id) == _x0(store.address, rnd[seed].episode_id)
        assert episode.robot_id.startswith("sim-farm-") and episode.model.version == 1
    everything = [*cem.values(), *rnd.values()]
    assert all(selection.is_evaluation(e) for e in everything)
    assert selection.labeled(everything) == []
    with pytest.raises(ValueError, match="evaluation episodes"):
        dataset.step_dataset(store.config.data_dir, everything)

    # A new farm (the old one stopped) finds every episode stored and runs none again.
    again = closed_loop.evaluate(farm().address, store.address, spec, contenders)
    assert [r.outcomes for r in again] == [r.outcomes for r in results]
    assert len(_episodes(store.address, "t1.model-1")) == SCENES

    # What the servoing did is read back from every stored episode.
    for r in results:
        assert r.servoing["all"]["episodes"] == SCENES
        assert r.servoing["successes"]["episodes"] == sum(r.outcomes.values())
    # Random exploration has no planner for its step limit to overrule, and never raises.
    assert by_name["random"].servoing["all"]["forced_close"] == 0.0
    assert by_name["random"].servoing["all"]["raises_per_episode"] == 0.0

    report = closed_loop.report(spec, results)
    assert report["arm"] == "eval-proxy-real" and report["scenes"] == SCENES
    assert report["contenders"][0]["servoing"] == results[0].servoing
    (pair,) = report["paired"]
    assert pair["a"] == "model-1" and pair["scenes"] == SCENES


def test_a_stopped_evaluation_continues_where_it_stopped(services):
    store, farm = services
    spec = EvaluationSpec.from_file("t2", ARM, scenes=SCENES, seed=12, shards=1)
    contender = Contender("random", "random")
    first = farm()
    with grpc.insecure_channel(first.address) as channel:
        stub = sim_farm_pb2_grpc.SimFarmStub(channel)
        stub.StartCollection(
            sim_farm_pb2.StartCollectionRequest(
                spec=closed_loop.collection_spec(spec, contender), collection_id="t2.random"
            )
        )
        # Polled, not spun: a busy loop here takes a core from the shard it waits for.
        assert until(lambda: len(_episodes(store.address, "t2.random")) >= 1, timeout_s=120)
        stub.StopCollection(sim_farm_pb2.StopCollectionRequest(collection_id="t2.random"))
    first.stop(grace_s=5)
    partial = {e.episode_id for e in _episodes(store.address, "t2.random")}
    assert 1 <= len(partial) < SCENES

    (result,) = closed_loop.evaluate(farm().address, store.address, spec, [contender])
    stored = _episodes(store.address, "t2.random")
    assert result.rate.episodes == SCENES and len(stored) == SCENES
    assert partial <= {e.episode_id for e in stored}


def test_a_contender_name_reused_for_another_policy_is_refused_not_resumed(services):
    # The same evaluation id and contender name, another command source: resuming
    # would hand back the first one's outcomes as the second's.
    store, farm = services
    spec = EvaluationSpec.from_file("t3", ARM, scenes=2, seed=13, shards=1)
    live = farm()
    closed_loop.evaluate(live.address, store.address, spec, [Contender("x", "random")])
    stored = {e.episode_id: e.result for e in _episodes(store.address, "t3.x")}
    oracle = closed_loop.collection_spec(spec, Contender("x", "oracle"))
    request = sim_farm_pb2.StartCollectionRequest(spec=oracle, collection_id="t3.x")

    # The farm that ran it refuses the id for another spec; a fresh one, what the store holds.
    for address, code, words in (
        (live.address, grpc.StatusCode.ALREADY_EXISTS, "another spec"),
        (farm().address, grpc.StatusCode.FAILED_PRECONDITION, "from another plan"),
    ):
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as err:
            sim_farm_pb2_grpc.SimFarmStub(channel).StartCollection(request)
        assert err.value.code() == code and words in err.value.details()
        assert "new collection id" in err.value.details()
    assert {e.episode_id: e.result for e in _episodes(store.address, "t3.x")} == stored


def test_contenders_and_specs_refuse_what_cannot_be_run():
    with pytest.raises(ValueError, match="model version"):
        Contender("x", "cem")
    with pytest.raises(ValueError, match="takes no model"):
        Contender("x", "random", model_version=2)
    with pytest.raises(ValueError, match="name"):
        Contender("../x", "random")
    with pytest.raises(ValueError, match="shards"):
        EvaluationSpec.from_file("e", ARM, scenes=2, seed=1, shards=3)


def test_the_evaluator_reaches_a_fleet_that_speaks_tls(tmp_path, monkeypatch):
    # A deployed fleet with TLS on (tls_dir): the evaluator, like every client, trusts
    # GRASPFLEET_TLS_CA; the farm's workers reach the store the same way.
    make_certificate(tmp_path / "tls")
    tls = str(tmp_path / "tls")
    monkeypatch.setenv(upstream.TLS_CA_ENV, f"{tls}/tls.crt")
    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store"), tls_dir=tls))
    farm = create_farm(
        SimFarmConfig(
            port=0,
            store_address=store.address,
            workers=1,
            spool_dir=str(tmp_path / "spool"),
            tls_dir=tls,
        )
    )
    try:
        spec = EvaluationSpec.from_file("tls", ARM, scenes=1, seed=3, shards=1)
        (result,) = closed_loop.evaluate(
            farm.address, store.address, spec, [Contender("random", "random")]
        )
    finally:
        farm.stop(grace_s=0)
        store.stop(grace_s=0)
    assert result.rate.episodes == 1


def test_contender_flags_name_versions_for_the_evaluator_and_labels_for_the_trainer():
    import argparse

    from services.evaluation.contenders import parse_contender, split_contender

    assert parse_contender("random") == Contender("random", "random")
    assert parse_contender("v3=cem:3") == Contender("v3", "cem", 3)
    assert parse_contender("r=cem:3:rcan:2") == Contender("r", "cem", 3, "rcan", 2)
    assert split_contender("c=cem:canary:rcan:stable") == ("c", "cem", "canary", "stable")
    for text in ("v3", "v3=cem", "v3=cem:3:refiner:2", "v3=cem:x"):
        with pytest.raises(argparse.ArgumentTypeError, match="--contender"):
            parse_contender(text)
