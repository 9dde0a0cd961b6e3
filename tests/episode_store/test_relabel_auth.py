"""Relabel changes training labels: it needs the store's bearer token; reads stay open."""

from __future__ import annotations

import grpc
import pytest

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import synthetic as samples
from services import cli
from services.common.auth import bearer
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server

TOKEN = "relabel-test-token"
RELABEL = episode_store_pb2.RelabelRequest(
    episode_id="sample-1", success=True, reason="seen on video", source="user:ana"
)


def _start(tmp_path, token: str):
    server = create_server(
        EpisodeStoreConfig(port=0, grace_s=0.0, data_dir=str(tmp_path / "store"), auth_token=token)
    )
    channel, stub = client.connect(server.address)
    with channel:
        client.write_episode(stub, samples.sample_episode(1, robot_id="kuka-01"))
    return server


@pytest.fixture
def store(tmp_path):
    server = _start(tmp_path, TOKEN)
    yield server
    server.stop(grace_s=0)


def _history(stub) -> list[int]:
    got = stub.GetEpisode(episode_store_pb2.GetEpisodeRequest(episode_id="sample-1"))
    return [h.state for h in got.label_history]


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ([], grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", f"Basic {TOKEN}")], grpc.StatusCode.UNAUTHENTICATED),
        (bearer("not-the-token"), grpc.StatusCode.PERMISSION_DENIED),
    ],
    ids=["missing", "not-bearer", "wrong"],
)
def test_relabel_needs_the_bearer_token(store, metadata, code):
    channel, stub = client.connect(store.address)
    with channel:
        with pytest.raises(grpc.RpcError) as refused:
            stub.Relabel(RELABEL, metadata=metadata)
        assert refused.value.code() == code
        # Reads need no token, and nothing changed.
        assert _history(stub) == [common_pb2.LABEL_STATE_AUTO]
        assert stub.Stats(episode_store_pb2.StatsRequest()).episodes == 1


def test_relabel_with_the_token_changes_the_label(store):
    channel, stub = client.connect(store.address)
    with channel:
        relabeled = stub.Relabel(RELABEL, metadata=bearer(TOKEN))
        assert relabeled.summary.label.state == common_pb2.LABEL_STATE_RELABELED
        assert _history(stub) == [common_pb2.LABEL_STATE_AUTO, common_pb2.LABEL_STATE_RELABELED]


def test_the_cli_sends_the_token_from_its_flag_or_the_environment(store, monkeypatch, capsys):
    argv = ["episodes", "relabel", "sample-1", "--success", "--reason", "video"]
    argv += ["--source", "user:ana", "--store", store.address]
    monkeypatch.delenv("GRASPFLEET_TOKEN", raising=False)
    assert cli.main(argv) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert cli.main([*argv, "--token", TOKEN]) == 0
    assert "2 labels in its history" in capsys.readouterr().out
    monkeypatch.setenv("GRASPFLEET_TOKEN", TOKEN)
    assert cli.main(argv) == 0
    assert "3 labels in its history" in capsys.readouterr().out


def test_an_empty_token_disables_authentication_and_says_so(tmp_path, caplog):
    server = _start(tmp_path, "")
    try:
        assert "AUTHENTICATION DISABLED" in caplog.text and "relabel" in caplog.text
        channel, stub = client.connect(server.address)
        with channel:
            stub.Relabel(RELABEL)
            assert len(_history(stub)) == 2
    finally:
        server.stop(grace_s=0)
