"""Workload identities steer nothing they do not own: an arm's episodes come from that arm.

A store that requires client certificates refuses an episode whose robot id is
not its writer's, before anything is stored; the rollout, which decides on the
store's REAL episodes, decides as it would have without the forgery.
"""

from __future__ import annotations

import grpc
import pytest

from graspfleet.v1 import common_pb2, episode_store_pb2, episode_store_pb2_grpc, trainer_pb2
from services.common import upstream
from services.episode_store import client, writers
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from tests.fixtures.tls import issue, make_ca
from tests.trainer.conftest import AUTH, REAL, episode, trainer_config, trainer_stub, wait_for

NAME = "grasp_success"


@pytest.fixture
def identities(tmp_path):
    """A CA, and the certificate of each workload the test plays, by identity."""
    ca = make_ca(tmp_path / "ca")
    names = ("episode-store", "trainer", "robot-agent/kuka-01", "robot-agent/kuka-02", "sim-farm")
    return ca, {name: issue(tmp_path / name.replace("/", "-"), ca, name) for name in names}


@pytest.fixture
def mtls_store(tmp_path, identities):
    _, certificates = identities
    server = create_store(
        EpisodeStoreConfig(
            port=0,
            data_dir=str(tmp_path / "store"),
            grace_s=0,
            tls_dir=str(certificates["episode-store"]),
            tls_client_auth=True,
        )
    )
    yield server
    server.stop(grace_s=0)


def _stub(server, identities, identity: str | None):
    ca, certificates = identities
    channel = upstream.channel(
        f"localhost:{server.port}",
        tls_ca=str(ca),
        tls_client_dir=str(certificates[identity]) if identity else "",
    )
    return channel, episode_store_pb2_grpc.EpisodeStoreStub(channel)


def test_the_rule_names_who_may_write_which_robot():
    header = common_pb2.EpisodeHeader(robot_id="kuka-01")
    assert writers.refusal(None, header) is None  # a store without identities checks none
    assert writers.refusal("robot-agent/kuka-01", header) is None
    assert "robot-agent/kuka-01" in writers.refusal("robot-agent/kuka-02", header)
    assert "shards only" in writers.refusal("sim-farm", header)
    assert writers.refusal("trainer", header) is not None
    assert writers.refusal("robot-agent/kuka-01-evil", header) is not None
    shard = common_pb2.EpisodeHeader(robot_id="sim-farm-3", domain=common_pb2.DOMAIN_SIM)
    assert writers.refusal("sim-farm", shard) is None
    assert writers.refusal("robot-agent/sim-farm-3", shard) is None  # an agent named so: its own


def test_a_caller_without_a_client_certificate_cannot_reach_the_store(mtls_store, identities):
    channel, stub = _stub(mtls_store, identities, None)
    with channel, pytest.raises(grpc.RpcError) as refused:
        stub.Stats(episode_store_pb2.StatsRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails


def test_a_forged_real_success_stream_is_refused_and_the_canary_decision_unchanged(
    tmp_path, mtls_store, identities, monkeypatch
):
    from services.trainer.server import create_server as create_trainer

    ca, certificates = identities
    for version in (1, 2):
        (tmp_path / "models" / NAME / str(version)).mkdir(parents=True)
    # The trainer reads the store as itself, through the TLS settings every pod gets.
    monkeypatch.setenv(upstream.TLS_CA_ENV, str(ca))
    monkeypatch.setenv(upstream.TLS_CLIENT_DIR_ENV, str(certificates["trainer"]))
    trainer = create_trainer(
        trainer_config(
            tmp_path,
            mtls_store,
            store_address=f"localhost:{mtls_store.port}",
            rollout_interval_s=0.1,
            rollout_min_grasps=6,
            rollout_max_grasps=50,
        )
    )
    ref = {v: common_pb2.ModelRef(name=NAME, version=v) for v in (1, 2)}
    channel, stub = trainer_stub(trainer)
    try:
        with channel:
            for version, label in ((1, "stable"), (2, "canary")):
                stub.SetVersionLabel(
                    trainer_pb2.SetVersionLabelRequest(name=NAME, version=version, label=label),
                    metadata=AUTH,
                )
            # kuka-02 (a stable arm) forges six canary successes in kuka-01's name.
            forger_channel, forger = _stub(mtls_store, identities, "robot-agent/kuka-02")
            with forger_channel:
                for i in range(6):
                    forged = episode(
                        500 + i, REAL, True, robot_id="kuka-01", model=ref[2], now=True
                    )
                    with pytest.raises(grpc.RpcError) as refused:
                        client.write_episode(forger, forged)
                    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                    assert "robot-agent/kuka-01" in refused.value.details()
                # Its own grasps on stable are accepted: 5 of 6.
                for i in range(6):
                    own = episode(510 + i, REAL, i > 0, robot_id="kuka-02", model=ref[1], now=True)
                    client.write_episode(forger, own)
            # kuka-01 itself fails every grasp with the canary.
            arm_channel, arm = _stub(mtls_store, identities, "robot-agent/kuka-01")
            with arm_channel:
                for i in range(6):
                    own = episode(520 + i, REAL, False, robot_id="kuka-01", model=ref[2], now=True)
                    client.write_episode(arm, own)
                canary = arm.Stats(
                    episode_store_pb2.StatsRequest(
                        filter=episode_store_pb2.EpisodeFilter(domain=REAL, model=ref[2])
                    )
                )
                listed = client.list_all(arm, episode_store_pb2.EpisodeFilter(domain=REAL))
                writers_seen = {(e.robot_id, e.writer) for e in listed}
            assert (canary.successes, canary.labeled) == (0, 6)  # nothing forged was stored
            assert writers_seen == {
                ("kuka-01", "robot-agent/kuka-01"),
                ("kuka-02", "robot-agent/kuka-02"),
            }
            # The rollout decides on what the arms really did: the canary is shown worse.
            wait_for(
                lambda: (
                    {
                        label: v.version
                        for v in stub.ListModelVersions(
                            trainer_pb2.ListModelVersionsRequest(name=NAME)
                        ).versions
                        for label in v.labels
                    }.get("canary")
                    == 1
                ),
                15,
                "the rollback of canary 2",
            )
            back = stub.ListLabelChanges(
                trainer_pb2.ListLabelChangesRequest(name=NAME, label="canary")
            ).changes[-1]
            assert back.by == "rollout" and "shown worse" in back.reason
            assert "canary 2 rolled back" in back.reason and "canary 0/6" in back.reason
    finally:
        trainer.stop(grace_s=0)
