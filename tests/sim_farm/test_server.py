"""The sim-farm over gRPC: collections in worker processes, streamed into a real store."""

from __future__ import annotations

import time

import grpc
import pytest

from graspfleet.v1 import common_pb2, episode_store_pb2, sim_farm_pb2, sim_farm_pb2_grpc
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.server import create_server as create_farm
from tests.fixtures.planning_fleet import planning_fleet

Policy = sim_farm_pb2.CollectionPolicy
DONE = {
    sim_farm_pb2.COLLECTION_STATE_SUCCEEDED,
    sim_farm_pb2.COLLECTION_STATE_FAILED,
    sim_farm_pb2.COLLECTION_STATE_STOPPED,
}


@pytest.fixture
def farm(tmp_path):
    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))
    farm = create_farm(
        SimFarmConfig(
            port=0, store_address=store.address, workers=2, spool_dir=str(tmp_path / "spool")
        )
    )
    with grpc.insecure_channel(farm.address) as channel:
        yield sim_farm_pb2_grpc.SimFarmStub(channel), store
    farm.stop(grace_s=0)
    store.stop(grace_s=0)


def _wait(stub, collection_id: str, timeout_s: float = 120.0) -> sim_farm_pb2.Collection:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        collection = stub.GetCollection(
            sim_farm_pb2.GetCollectionRequest(collection_id=collection_id)
        )
        if collection.state in DONE:
            return collection
        time.sleep(0.2)
    raise TimeoutError(f"collection {collection_id} did not finish")


def test_a_collection_lands_in_the_store_with_everything_training_needs(farm):
    stub, store = farm
    spec = sim_farm_pb2.CollectionSpec(
        num_episodes=6,
        num_shards=2,
        max_steps=4,
        domain=common_pb2.DOMAIN_SIM,
        randomization=common_pb2.RANDOMIZATION_VISUAL,
        policy=Policy(kind=Policy.KIND_RANDOM),
        seed=7,
    )
    started = stub.StartCollection(
        sim_farm_pb2.StartCollectionRequest(spec=spec, collection_id="c1")
    )
    assert started.collection_id == "c1" and len(started.shards) == 2
    # A retry with the same id is the same collection, not a second one.
    assert (
        stub.StartCollection(
            sim_farm_pb2.StartCollectionRequest(spec=spec, collection_id="c1")
        ).collection_id
        == "c1"
    )
    done = _wait(stub, "c1")
    assert done.state == sim_farm_pb2.COLLECTION_STATE_SUCCEEDED, done.error
    assert done.episodes_done == 6
    channel, store_stub = client.connect(store.address)
    with channel:
        stored = list(
            client.list_all(store_stub, episode_store_pb2.EpisodeFilter(collection_id="c1"))
        )
        assert len(stored) == 6
        full = store_stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(episode_id=stored[0].episode_id, include_steps=True)
        )
    assert full.header.domain == common_pb2.DOMAIN_SIM
    assert full.header.randomization == common_pb2.RANDOMIZATION_VISUAL
    assert full.header.x0_mask.data and all(s.mask.data for s in full.steps)
    assert len(full.header.object_ids) == 5 and full.header.seed
    assert full.outcome.result in (common_pb2.GRASP_RESULT_SUCCESS, common_pb2.GRASP_RESULT_FAILURE)
    assert sum(e.label.success for e in stored) == done.successes


def test_a_noisy_oracle_collection_explores_around_grasps_in_simulation(farm):
    stub, store = farm
    spec = sim_farm_pb2.CollectionSpec(
        num_episodes=4,
        num_shards=1,
        max_steps=8,
        domain=common_pb2.DOMAIN_SIM,
        policy=Policy(kind=Policy.KIND_NOISY_ORACLE),
        seed=3,
    )
    stub.StartCollection(sim_farm_pb2.StartCollectionRequest(spec=spec, collection_id="noisy"))
    done = _wait(stub, "noisy")
    assert done.state == sim_farm_pb2.COLLECTION_STATE_SUCCEEDED, done.error
    channel, store_stub = client.connect(store.address)
    with channel:
        stored = list(
            client.list_all(store_stub, episode_store_pb2.EpisodeFilter(collection_id="noisy"))
        )
    assert len(stored) == 4
    assert {e.domain for e in stored} == {common_pb2.DOMAIN_SIM}


def test_collections_at_once_and_episodes_per_collection_are_capped(tmp_path):
    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))
    farm = create_farm(
        SimFarmConfig(
            port=0,
            store_address=store.address,
            workers=1,
            spool_dir=str(tmp_path / "spool"),
            max_active_collections=1,
        )
    )

    def spec(episodes: int) -> sim_farm_pb2.CollectionSpec:
        return sim_farm_pb2.CollectionSpec(
            num_episodes=episodes,
            domain=common_pb2.DOMAIN_SIM,
            policy=Policy(kind=Policy.KIND_RANDOM),
        )

    def start(collection_id: str, episodes: int = 1000) -> sim_farm_pb2.Collection:
        request = sim_farm_pb2.StartCollectionRequest(
            spec=spec(episodes), collection_id=collection_id
        )
        return stub.StartCollection(request)

    try:
        with grpc.insecure_channel(farm.address) as channel:
            stub = sim_farm_pb2_grpc.SimFarmStub(channel)
            with pytest.raises(grpc.RpcError) as too_big:
                start("huge", 100_001)
            assert too_big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "1 to 100000" in too_big.value.details()
            start("first")
            with pytest.raises(grpc.RpcError) as busy:
                start("second")
            assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_active_collections=1" in busy.value.details()
            assert start("first").collection_id == "first"  # rejoining is not a new one
            stub.StopCollection(sim_farm_pb2.StopCollectionRequest(collection_id="first"))
            assert _wait(stub, "first").state == sim_farm_pb2.COLLECTION_STATE_STOPPED
            assert start("second", 1).collection_id == "second"
    finally:
        farm.stop(grace_s=0)
        store.stop(grace_s=0)


def test_cem_episodes_record_the_model_version_that_drove_them(tmp_path):
    with planning_fleet(tmp_path) as fleet:
        farm, store = fleet.start_farm(workers=1), fleet.store
        with grpc.insecure_channel(farm.address) as channel:
            stub = sim_farm_pb2_grpc.SimFarmStub(channel)
            spec = sim_farm_pb2.CollectionSpec(
                num_episodes=2,
                max_steps=3,
                domain=common_pb2.DOMAIN_SIM,
                object_set="sim-test",
                policy=Policy(kind=Policy.KIND_CEM),
                seed=5,
            )
            stub.StartCollection(
                sim_farm_pb2.StartCollectionRequest(spec=spec, collection_id="cem")
            )
            done = _wait(stub, "cem")
        assert done.state == sim_farm_pb2.COLLECTION_STATE_SUCCEEDED, done.error
        channel, store_stub = client.connect(store.address)
        with channel:
            stored = list(
                client.list_all(store_stub, episode_store_pb2.EpisodeFilter(collection_id="cem"))
            )
            stats = store_stub.Stats(episode_store_pb2.StatsRequest())
        assert len(stored) == 2
        # The episode names its model, so Stats (and Prometheus) count CEM apart from random.
        assert {(e.model.name, e.model.version) for e in stored} == {("grasp_success", 1)}
        assert [g.model.version for g in stats.groups] == [1]


@pytest.mark.parametrize(
    ("spec", "code", "fragment"),
    [
        (
            sim_farm_pb2.CollectionSpec(num_episodes=0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "num_episodes=0",
        ),
        (
            sim_farm_pb2.CollectionSpec(num_episodes=2, num_shards=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "num_shards=5",
        ),
        (
            sim_farm_pb2.CollectionSpec(num_episodes=1, domain=9),
            grpc.StatusCode.INVALID_ARGUMENT,
            "domain",
        ),
        (
            sim_farm_pb2.CollectionSpec(num_episodes=1, domain=1, object_set="/nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "object_set",
        ),
        (
            sim_farm_pb2.CollectionSpec(
                num_episodes=1, domain=1, policy=Policy(kind=Policy.KIND_CEM)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "--planner-address",
        ),
        (
            sim_farm_pb2.CollectionSpec(
                num_episodes=1,
                domain=common_pb2.DOMAIN_REAL,
                policy=Policy(kind=Policy.KIND_NOISY_ORACLE),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "privileged object state",
        ),
        (
            sim_farm_pb2.CollectionSpec(
                num_episodes=1,
                domain=1,
                policy=Policy(
                    kind=Policy.KIND_RANDOM,
                    servoing=common_pb2.ServoingParams(close_ratio=0.5),
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "servoing applies to CEM",
        ),
        (
            sim_farm_pb2.CollectionSpec(num_episodes=1, domain=1, max_steps=500),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_steps=500",
        ),
    ],
)
def test_bad_collection_requests(farm, spec, code, fragment):
    stub, _ = farm
    if not spec.policy.kind:
        spec.policy.kind = Policy.KIND_RANDOM
    with pytest.raises(grpc.RpcError) as refused:
        stub.StartCollection(sim_farm_pb2.StartCollectionRequest(spec=spec))
    assert refused.value.code() == code and fragment in refused.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetCollection(sim_farm_pb2.GetCollectionRequest(collection_id="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("collection_id", ["/abs/path", "../up", "a/b", "x" * 600, ".hidden"])
def test_collection_ids_that_could_become_paths_are_refused(farm, tmp_path, collection_id):
    stub, _ = farm
    spec = sim_farm_pb2.CollectionSpec(
        num_episodes=1, domain=common_pb2.DOMAIN_SIM, policy=Policy(kind=Policy.KIND_RANDOM)
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.StartCollection(
            sim_farm_pb2.StartCollectionRequest(spec=spec, collection_id=collection_id)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "collection_id" in refused.value.details() and len(refused.value.details()) < 400
    assert not stub.ListCollections(sim_farm_pb2.ListCollectionsRequest()).collections


def test_a_store_that_stops_answering_fails_the_collection_and_keeps_its_episodes(tmp_path):
    # Each shard spools at most one episode (the cap), waits for the store, and gives up when
    # the store takes nothing for upload_stall_s; a farm started later sends what was spooled.
    store_dir, spool_dir = tmp_path / "store", tmp_path / "spool"
    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(store_dir)))
    address = store.address
    store.stop(grace_s=0)
    farm = create_farm(
        SimFarmConfig(
            port=0,
            store_address=address,
            workers=2,
            spool_dir=str(spool_dir),
            spool_max_bytes=2,
            upload_stall_s=2.0,
        )
    )
    spec = sim_farm_pb2.CollectionSpec(
        num_episodes=6,
        num_shards=2,
        max_steps=2,
        domain=common_pb2.DOMAIN_SIM,
        policy=Policy(kind=Policy.KIND_RANDOM),
    )
    try:
        with grpc.insecure_channel(farm.address) as channel:
            stub = sim_farm_pb2_grpc.SimFarmStub(channel)
            stub.StartCollection(sim_farm_pb2.StartCollectionRequest(spec=spec, collection_id="c"))
            done = _wait(stub, "c", timeout_s=60)
    finally:
        farm.stop(grace_s=0)
    assert done.state == sim_farm_pb2.COLLECTION_STATE_FAILED
    assert "took none of this shard's 1 spooled episodes" in done.error and address in done.error
    spooled = sorted(p.name for p in spool_dir.rglob("*.episode"))
    assert len(spooled) == 2  # one per shard: the cap held back the rest

    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(store_dir)))
    farm = create_farm(SimFarmConfig(port=0, store_address=store.address, spool_dir=str(spool_dir)))
    try:
        channel, store_stub = client.connect(store.address)
        with channel:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                found = list(client.list_all(store_stub, episode_store_pb2.EpisodeFilter()))
                if len(found) == 2:
                    break
                time.sleep(0.2)
        assert sorted(e.episode_id for e in found) == sorted(
            p.removesuffix(".episode") for p in spooled
        )
    finally:
        farm.stop(grace_s=0)
        store.stop(grace_s=0)
