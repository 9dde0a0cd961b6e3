"""graspfleet_store_refused_episodes_total counts episodes the store refused for what was sent."""

from __future__ import annotations

import threading
import urllib.request

import grpc
import pytest
from prometheus_client import REGISTRY

from graspfleet.v1 import episode_store_pb2
from models.episodes import synthetic as samples
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import SERVICE_NAME, create_server
from tests.fixtures.waiting import until

METRIC = "graspfleet_store_refused_episodes_total"
CODES = ("INVALID_ARGUMENT", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED", "ABORTED")


def _counts() -> dict[str, float]:
    return {code: REGISTRY.get_sample_value(METRIC, {"code": code}) or 0.0 for code in CODES}


def _writes_started() -> float:
    labels = {"grpc_service": SERVICE_NAME, "grpc_method": "WriteEpisode"}
    return (
        REGISTRY.get_sample_value(
            "grpc_server_started_total", {**labels, "grpc_type": "client_stream"}
        )
        or 0.0
    )


def _moved(before: dict[str, float]) -> dict[str, float]:
    return {code: n - before[code] for code, n in _counts().items() if n != before[code]}


@pytest.fixture
def store(tmp_path):
    server = create_server(
        EpisodeStoreConfig(
            port=0,
            data_dir=str(tmp_path / "store"),
            metrics_port=0,
            max_workers=4,
            max_concurrent_writes=1,
            write_idle_timeout_s=3.0,
            max_steps=20,
            grace_s=0,
        )
    )
    channel, stub = client.connect(server.address)
    with channel:
        yield server, stub
    server.stop(grace_s=0)


def _write(stub, requests) -> grpc.StatusCode:
    try:
        stub.WriteEpisode(iter(requests), timeout=10)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_refused_episodes_are_counted_by_code(store):
    server, stub = store
    record = samples.sample_episode(1)
    before = _counts()

    # Stored, then resent: neither is a refusal.
    assert _write(stub, client.episode_requests(record)) == grpc.StatusCode.OK
    assert _write(stub, client.episode_requests(record)) == grpc.StatusCode.OK
    assert _moved(before) == {}

    # Bad data: steps before the header.
    steps_first = [episode_store_pb2.WriteEpisodeRequest(step=record.steps[0])]
    assert _write(stub, steps_first) == grpc.StatusCode.INVALID_ARGUMENT
    # Another episode under a stored id.
    clash = samples.sample_episode(2, episode_id=record.header.episode_id)
    assert _write(stub, client.episode_requests(clash)) == grpc.StatusCode.ALREADY_EXISTS
    # Over a limit of the store's.
    long = samples.sample_episode(3, num_steps=21)
    assert _write(stub, client.episode_requests(long)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _moved(before) == {"INVALID_ARGUMENT": 1, "ALREADY_EXISTS": 1, "RESOURCE_EXHAUSTED": 1}

    # Refusals for the store's load or for time are not the episode's: not counted.
    release = threading.Event()

    def idle():
        yield episode_store_pb2.WriteEpisodeRequest(header=samples.sample_episode(4).header)
        release.wait()

    try:
        started = _writes_started()
        holder = stub.WriteEpisode.future(idle(), timeout=30)
        assert until(lambda: _writes_started() > started, 10)  # it holds the only write slot
        busy = _write(stub, client.episode_requests(samples.sample_episode(5)))
        assert busy == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert holder.code() == grpc.StatusCode.ABORTED
    finally:
        release.set()
    assert _moved(before) == {"INVALID_ARGUMENT": 1, "ALREADY_EXISTS": 1, "RESOURCE_EXHAUSTED": 1}

    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert f'{METRIC}{{code="INVALID_ARGUMENT"}}' in text
    # Every code is exported before its first refusal, so an alert sees the first increase.
    assert f'{METRIC}{{code="OUT_OF_RANGE"}} 0.0' in text
