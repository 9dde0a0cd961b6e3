"""Ingest cannot starve the store: idle streams time out, excess streams are refused at once,
and health checks and reads always find a thread."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import synthetic as samples
from services.common.config import ConfigError
from services.common.server import LIVENESS
from services.episode_store import client
from services.episode_store.client.spool import EpisodeSpool
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import SERVICE_NAME, create_server
from tests.fixtures.waiting import until

WORKERS = 4
WRITES = 2
IDLE_S = 3.0


@pytest.fixture
def store(tmp_path):
    server = create_server(
        EpisodeStoreConfig(
            port=0,
            data_dir=str(tmp_path / "store"),
            max_workers=WORKERS,
            max_concurrent_writes=WRITES,
            write_idle_timeout_s=IDLE_S,
            grace_s=0,
        )
    )
    yield server
    server.stop(grace_s=0)


@pytest.fixture
def release():
    """Set at the end of a test, so that client threads still feeding idle streams end."""
    event = threading.Event()
    yield event
    event.set()


def _idle(record, release: threading.Event):
    """A stream that sends the header and one step, then nothing."""
    yield episode_store_pb2.WriteEpisodeRequest(header=record.header)
    yield episode_store_pb2.WriteEpisodeRequest(step=record.steps[0])
    release.wait()


def _writes_started() -> float:
    """WriteEpisode calls this process's servers have begun (each takes a slot or is refused)."""
    labels = {"grpc_service": SERVICE_NAME, "grpc_method": "WriteEpisode"}
    return (
        REGISTRY.get_sample_value(
            "grpc_server_started_total", {**labels, "grpc_type": "client_stream"}
        )
        or 0.0
    )


def _stored_files(store) -> list[Path]:
    """Shard and staging files under the store's data folder."""
    root = Path(store.config.data_dir)
    return [p for p in (*root.glob("shards/**/*"), *root.glob("staging/*")) if p.is_file()]


def test_idle_streams_cannot_starve_health_checks_and_reads(store, release):
    channel, stub = client.connect(store.address)
    with channel:
        started = time.monotonic()
        calls = [
            stub.WriteEpisode.future(_idle(samples.sample_episode(i), release), timeout=60)
            for i in range(WORKERS + 2)
        ]
        # The streams beyond the write slots are refused at once, with a retry hint.
        assert until(lambda: sum(c.done() for c in calls) >= len(calls) - WRITES, 10)
        refused = [c for c in calls if c.done()]
        for call in refused:
            assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "stored nothing" in call.details()
            assert client.retry_after_s(call.exception()) == 1.0
        idle = [c for c in calls if not c.done()]
        assert len(idle) == WRITES

        # With every write slot held by an idle stream, health checks and reads answer.
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME, LIVENESS):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert stub.Stats(episode_store_pb2.StatsRequest(), timeout=2).episodes == 0
        assert not stub.ListEpisodes(episode_store_pb2.ListEpisodesRequest(), timeout=2).episodes
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetEpisode(episode_store_pb2.GetEpisodeRequest(episode_id="sample-0"), timeout=2)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        # The idle streams are ended by the store, with a status that says to send again.
        for call in idle:
            assert call.code() == grpc.StatusCode.ABORTED
            assert "stored nothing; send the whole episode again" in call.details()
        assert time.monotonic() - started < IDLE_S + 10

        # Nothing partial was stored, and the slots are free again.
        assert stub.Stats(episode_store_pb2.StatsRequest(), timeout=2).episodes == 0
        assert not _stored_files(store)
        assert client.write_episode(stub, samples.sample_episode(0), timeout_s=10).num_steps


def test_the_spool_sends_an_episode_again_after_the_store_ended_its_idle_stream(
    store, release, tmp_path
):
    spool = EpisodeSpool(tmp_path / "spool", "kuka-01", max_strikes=1)
    record = samples.sample_episode(7)
    spool.put(record)
    channel, stub = client.connect(store.address)
    with channel:

        def stalled(record):
            return stub.WriteEpisode(_idle(record, release), timeout=30)

        with pytest.raises(grpc.RpcError) as ended:
            spool.flush(stalled)
        assert ended.value.code() == grpc.StatusCode.ABORTED
        # Not a refusal of the episode: it waits in the spool for the next pass.
        assert spool.depth() == 1 and not list(spool.rejected.iterdir())
        assert spool.flush(functools.partial(client.write_episode, stub, timeout_s=10)) == 1
        assert stub.Stats(episode_store_pb2.StatsRequest(), timeout=2).episodes == 1
    assert spool.depth() == 0 and not list(spool.rejected.iterdir())


def test_a_busy_store_is_not_the_episodes_fault(store, release, tmp_path):
    """RESOURCE_EXHAUSTED with a retry hint ends the spool's pass without a strike."""
    spool = EpisodeSpool(tmp_path / "spool", "kuka-01", max_strikes=1)
    first, second = samples.sample_episode(1), samples.sample_episode(2)
    spool.put(first)
    time.sleep(0.01)  # oldest first: `first` goes first
    spool.put(second)
    channel, stub = client.connect(store.address)
    with channel:
        started = _writes_started()
        holders = [
            stub.WriteEpisode.future(_idle(samples.sample_episode(10 + i), release), timeout=60)
            for i in range(WRITES)
        ]
        assert until(lambda: _writes_started() >= started + WRITES, 10)  # every slot is taken

        def write(record):
            if record.header.episode_id == second.header.episode_id:
                # Were the pass to go on, the store would have room again by now.
                assert until(lambda: all(h.done() for h in holders), IDLE_S + 10)
            return client.write_episode(stub, record, timeout_s=10)

        with pytest.raises(grpc.RpcError) as busy:
            spool.flush(write)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert spool.depth() == 2 and not list(spool.rejected.iterdir())
        assert until(lambda: all(h.done() for h in holders), IDLE_S + 10)
        assert spool.flush(write) == 2
    assert not list(spool.rejected.iterdir())


def test_write_slots_must_leave_threads_for_health_and_reads(tmp_path):
    with pytest.raises(ConfigError, match="must be below max_workers"):
        EpisodeStoreConfig(data_dir=str(tmp_path), max_workers=8, max_concurrent_writes=8)


def _trickle(record, every_s: float):
    """The header, then a step every `every_s`: never idle, done only after all its steps."""
    yield episode_store_pb2.WriteEpisodeRequest(header=record.header)
    for step in record.steps:
        time.sleep(every_s)
        yield episode_store_pb2.WriteEpisodeRequest(step=step)


def test_a_stream_that_trickles_forever_is_ended_at_the_total_limit(tmp_path):
    store = create_server(
        EpisodeStoreConfig(
            port=0,
            data_dir=str(tmp_path / "store"),
            write_idle_timeout_s=2.0,
            write_timeout_s=3.0,
            grace_s=0,
        )
    )
    try:
        channel, stub = client.connect(store.address)
        with channel:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as ended:
                stub.WriteEpisode(
                    _trickle(samples.sample_episode(3, num_steps=40), every_s=0.5), timeout=30
                )
            # Ended by the total limit, though no gap reached the idle timeout.
            assert ended.value.code() == grpc.StatusCode.ABORTED
            assert "write_timeout_s" in ended.value.details()
            assert time.monotonic() - started < 3.0 + 2.0
            assert not _stored_files(store)
            assert client.write_episode(stub, samples.sample_episode(0), timeout_s=10).num_steps
    finally:
        store.stop(grace_s=0)


def test_limits_that_could_lose_or_exhaust_are_configuration_errors(tmp_path):
    data_dir = str(tmp_path / "store")
    # An episode GetEpisode could not return (the old default: 256 MiB against 16 MiB messages).
    with pytest.raises(ConfigError, match="GetEpisode"):
        EpisodeStoreConfig(data_dir=data_dir, max_episode_bytes=256 * 1024 * 1024)
    # Eight uploads of 256 MiB at once against a 1 GiB budget (a 4 GiB pod OOMs on that).
    with pytest.raises(ConfigError, match="max_inflight_bytes"):
        EpisodeStoreConfig(
            data_dir=data_dir,
            max_message_bytes=300 * 1024 * 1024,
            max_episode_bytes=256 * 1024 * 1024,
        )
    defaults = EpisodeStoreConfig(data_dir=data_dir)
    assert defaults.episode_bytes_limit == defaults.max_message_bytes - 1024 * 1024
    assert defaults.max_concurrent_writes * defaults.episode_bytes_limit <= (
        defaults.max_inflight_bytes
    )


def test_the_largest_episode_the_store_accepts_comes_back_whole(tmp_path):
    limit = 2 * 1024 * 1024
    store = create_server(
        EpisodeStoreConfig(
            port=0,
            data_dir=str(tmp_path / "store"),
            max_message_bytes=limit + 1024 * 1024,
            max_episode_bytes=limit,
            grace_s=0,
        )
    )
    # Raw 256x256 images: about 1.8 MB in all, close to the 2 MiB limit.
    raw = common_pb2.Image.ENCODING_RAW
    record = samples.sample_episode(5, num_steps=6, image_size=256, encoding=raw)
    try:
        channel, stub = client.connect(store.address, max_message_bytes=limit + 1024 * 1024)
        with channel:
            stored = client.write_episode(stub, record, timeout_s=30)
            assert 1.5 * 1024 * 1024 < stored.stored_bytes <= limit
            full = stub.GetEpisode(
                episode_store_pb2.GetEpisodeRequest(
                    episode_id=record.header.episode_id, include_steps=True
                ),
                timeout=30,
            )
            assert [s.image.data for s in full.steps] == [s.image.data for s in record.steps]
    finally:
        store.stop(grace_s=0)
