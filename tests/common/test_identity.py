"""Each call that changes state or holds a thread is refused to identities it does not belong to.

Servers require client certificates (tls_client_auth); the caller's identity
is its certificate's Common Name. Without identities (plaintext), nothing here
is checked: the same calls go through (the rest of the suite).
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from graspfleet.v1 import (
    common_pb2,
    episode_store_pb2,
    episode_store_pb2_grpc,
    servo_planner_pb2,
    servo_planner_pb2_grpc,
    sim_farm_pb2,
    sim_farm_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from models.episodes.synthetic import sample_episode
from services.common import upstream
from services.common.images import encode_image
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.server import create_server as create_farm
from tests.fixtures.tls import issue, make_ca

IDENTITIES = ("server", "user/alice", "trainer", "robot-agent/kuka-01", "sim-farm")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root / "ca")
    return ca, {name: issue(root / name.replace("/", "-"), ca, name) for name in IDENTITIES}


def _tls(pki) -> dict:
    _, certificates = pki
    return {"tls_dir": str(certificates["server"]), "tls_client_auth": True, "grace_s": 0}


def _channel(server, pki, identity: str) -> grpc.Channel:
    ca, certificates = pki
    return upstream.channel(
        f"localhost:{server.port}", tls_ca=str(ca), tls_client_dir=str(certificates[identity])
    )


def _code(call, *args, **kwargs) -> grpc.StatusCode:
    try:
        call(*args, **kwargs)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def store(tmp_path_factory, pki):
    server = create_store(
        EpisodeStoreConfig(port=0, data_dir=str(tmp_path_factory.mktemp("store")), **_tls(pki))
    )
    yield server
    server.stop(grace_s=0)


def test_a_relabel_records_the_proven_identity_not_what_the_caller_says(store, pki):
    with _channel(store, pki, "robot-agent/kuka-01") as channel:
        stub = episode_store_pb2_grpc.EpisodeStoreStub(channel)
        client.write_episode(stub, sample_episode(1, robot_id="kuka-01", num_steps=2))
        (stored,) = client.list_all(stub, episode_store_pb2.EpisodeFilter())
        relabel = episode_store_pb2.RelabelRequest(
            episode_id=stored.episode_id, success=True, reason="looked again", source="user:bob"
        )
        # An arm relabels nothing, its own episodes included.
        assert _code(lambda: stub.Relabel(relabel)) == grpc.StatusCode.PERMISSION_DENIED
    with _channel(store, pki, "user/alice") as channel:
        stub = episode_store_pb2_grpc.EpisodeStoreStub(channel)
        history = stub.Relabel(relabel).label_history
    assert history[-1].source == "user/alice"  # not "user:bob", which the caller claimed


def test_only_arms_and_the_farm_plan_grasps_and_no_plan_asks_for_unbounded_time(pki):
    # No predictor answers: each refusal comes before any planning.
    planner = create_planner(
        PlannerConfig(port=0, predictor_address="127.0.0.1:9", max_budget_ms=800, **_tls(pki))
    )
    image = encode_image(np.full((64, 64, 3), 100, np.uint8))
    request = servo_planner_pb2.PlanStepRequest(
        robot_id="kuka-01",
        x0=image,
        xt=image,
        workspace=common_pb2.Workspace(
            min_m=common_pb2.Vec3(x=0.2, y=-0.2, z=0.0), max_m=common_pb2.Vec3(x=0.8, y=0.2, z=0.3)
        ),
        budget_ms=801,
    )
    try:
        with _channel(planner, pki, "user/alice") as channel:
            stub = servo_planner_pb2_grpc.ServoPlannerStub(channel)
            assert _code(lambda: stub.PlanStep(request, timeout=10)) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
        with _channel(planner, pki, "robot-agent/kuka-01") as channel:
            stub = servo_planner_pb2_grpc.ServoPlannerStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.PlanStep(request, timeout=10)
    finally:
        planner.stop(grace_s=0)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_budget_ms=800" in refused.value.details()


def test_collections_are_started_and_stopped_by_people_and_the_trainer_only(tmp_path, store, pki):
    farm = create_farm(
        SimFarmConfig(
            port=0,
            store_address=f"localhost:{store.port}",
            spool_dir=str(tmp_path / "spool"),
            workers=1,
            **_tls(pki),
        )
    )
    spec = sim_farm_pb2.CollectionSpec(
        num_episodes=1,
        domain=common_pb2.DOMAIN_SIM,
        policy=sim_farm_pb2.CollectionPolicy(kind=sim_farm_pb2.CollectionPolicy.KIND_RANDOM),
    )
    start = sim_farm_pb2.StartCollectionRequest(spec=spec, collection_id="c1")
    stop = sim_farm_pb2.StopCollectionRequest(collection_id="c1")
    try:
        for identity in ("robot-agent/kuka-01", "sim-farm"):
            with _channel(farm, pki, identity) as channel:
                stub = sim_farm_pb2_grpc.SimFarmStub(channel)
                assert _code(stub.StartCollection, start) == (grpc.StatusCode.PERMISSION_DENIED), (
                    identity
                )
                assert _code(stub.StopCollection, stop) == (grpc.StatusCode.PERMISSION_DENIED), (
                    identity
                )
        with _channel(farm, pki, "trainer") as channel:
            stub = sim_farm_pb2_grpc.SimFarmStub(channel)
            assert stub.StartCollection(start).collection_id == "c1"
            assert _code(stub.StopCollection, stop) == grpc.StatusCode.OK
    finally:
        farm.stop(grace_s=0)


def test_runs_are_watched_by_people_only(tmp_path, store, pki):
    from services.trainer.config import TrainerConfig
    from services.trainer.server import create_server as create_trainer

    trainer = create_trainer(
        TrainerConfig(
            port=0,
            state_dir=str(tmp_path / "trainer"),
            model_base=str(tmp_path / "models"),
            store_address=f"localhost:{store.port}",
            store_data_dir=store.config.data_dir,
            k8s_api="off",
            **_tls(pki),
        )
    )
    watch = trainer_pb2.WatchRunRequest(run_id="none-such")
    try:
        with _channel(trainer, pki, "robot-agent/kuka-01") as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            assert _code(lambda: list(stub.WatchRun(watch, timeout=10))) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
        with _channel(trainer, pki, "user/alice") as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            assert _code(lambda: list(stub.WatchRun(watch, timeout=10))) == (
                grpc.StatusCode.NOT_FOUND
            )
    finally:
        trainer.stop(grace_s=0)


def test_a_client_presents_its_renewed_certificate_without_a_restart(tmp_path):
    """The fleet's CA and every certificate are replaced (as cert-manager rewrites mounted
    Secrets); the store restarts on the new ones, and a client made before the change
    reaches it through the same stub, now presenting its renewed certificate."""
    old_ca, new_ca = make_ca(tmp_path / "old-ca"), make_ca(tmp_path / "new-ca")
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    issue(server_dir, old_ca, "episode-store")
    issue(client_dir, old_ca, "robot-agent/kuka-01")

    def start(port: int = 0):
        return create_store(
            EpisodeStoreConfig(
                port=port,
                data_dir=str(tmp_path / "store"),
                tls_dir=str(server_dir),
                tls_client_auth=True,
                grace_s=0,
            )
        )

    store = start()
    port = store.port
    channel = upstream.channel(
        f"localhost:{port}", tls_ca=str(client_dir / "ca.crt"), tls_client_dir=str(client_dir)
    )
    stub = episode_store_pb2_grpc.EpisodeStoreStub(channel)
    try:
        assert stub.Stats(episode_store_pb2.StatsRequest(), timeout=10).episodes == 0
        store.stop(grace_s=0)
        # Renewal under a new CA: the old certificate is no longer accepted anywhere.
        issue(server_dir, new_ca, "episode-store")
        issue(client_dir, new_ca, "robot-agent/kuka-01")
        store = start(port)
        time.sleep(upstream.RENEW_CHECK_S + 0.1)
        assert stub.Stats(episode_store_pb2.StatsRequest(), timeout=10).episodes == 0
    finally:
        channel.close()
        store.stop(grace_s=0)
