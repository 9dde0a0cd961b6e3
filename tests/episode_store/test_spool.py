"""The spool keeps episodes on disk while the store is away and delivers each exactly once."""

from __future__ import annotations

import socket

from prometheus_client import REGISTRY

from graspfleet.v1 import episode_store_pb2
from models.episodes import synthetic as samples
from services.episode_store import client
from services.episode_store.client.spool import EpisodeSpool, Uploader
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server
from tests.fixtures.waiting import until


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_put_read_and_crash_leftovers(tmp_path):
    (tmp_path / ".half.tmp").write_bytes(b"partial")
    spool = EpisodeSpool(tmp_path, "kuka-01")
    assert not list(tmp_path.glob("*.tmp"))
    record = samples.sample_episode(3)
    path = spool.put(record)
    again = spool.read(path)
    assert (
        again.header == record.header
        and again.steps == record.steps
        and again.outcome == record.outcome
    )
    assert spool.depth() == 1


def test_store_away_then_back_delivers_everything_once(tmp_path):
    address = {"store": _free_address()}
    spool = EpisodeSpool(tmp_path / "spool", "kuka-01")
    uploader = Uploader(spool, lambda: address["store"], timeout_s=2, retry_s=(0.05, 0.2)).start()
    records = [samples.sample_episode(i) for i in range(5)]
    for record in records:
        uploader.submit(record)
    assert not uploader.wait_idle(0.5)
    assert spool.depth() == 5 and "UNAVAILABLE" in uploader.last_error

    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))
    try:
        address["store"] = server.address
        assert uploader.wait_idle(20)
        uploader.submit(records[0])  # a resend of something delivered: acknowledged as a duplicate
        assert uploader.wait_idle(20)
        channel, stub = client.connect(server.address)
        with channel:
            assert stub.Stats(episode_store_pb2.StatsRequest()).episodes == 5
    finally:
        uploader.stop()
        server.stop(grace_s=0)


def test_a_process_restart_keeps_the_spool_and_refused_episodes_are_kept_aside(tmp_path):
    spool = EpisodeSpool(tmp_path / "spool", "kuka-02")
    good = samples.sample_episode(1)
    bad = samples.sample_episode(2)
    bad.outcome.num_steps = 99  # the store will refuse it for good
    spool.put(bad)
    spool.put(good)
    # A new process finds both where the old one left them.
    spool = EpisodeSpool(tmp_path / "spool", "kuka-02")
    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))
    try:
        uploader = Uploader(spool, lambda: server.address).start()
        assert uploader.wait_idle(20)
        uploader.stop()
        rejected = sorted(p.name for p in spool.rejected.iterdir())
        assert rejected == ["sample-2.episode", "sample-2.episode.reason"]
        assert "outcome.num_steps=99" in (spool.rejected / "sample-2.episode.reason").read_text()
        channel, stub = client.connect(server.address)
        with channel:
            assert [e.episode_id for e in client.list_all(stub)] == ["sample-1"]
    finally:
        server.stop(grace_s=0)


def _rejected_gauge(spool: EpisodeSpool) -> float:
    return REGISTRY.get_sample_value("graspfleet_spool_rejected_episodes", {"spool": spool.name})


def test_a_poison_episode_is_refused_moved_aside_and_the_rest_go_on(tmp_path):
    spool = EpisodeSpool(tmp_path / "spool", "kuka-poison")
    poison = samples.sample_episode(1)
    poison.header.started_at.seconds = 253402300800  # past 9999-12-31: no valid Timestamp
    spool.put(poison)  # the oldest: first in line
    for seed in (2, 3):
        spool.put(samples.sample_episode(seed))
    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))
    uploader = Uploader(spool, lambda: server.address, timeout_s=5, retry_s=(0.05, 0.2)).start()
    try:
        assert uploader.wait_idle(30), uploader.last_error
        reason = (spool.rejected / "sample-1.episode.reason").read_text()
        assert "INVALID_ARGUMENT" in reason and "header.started_at.seconds" in reason
        assert _rejected_gauge(spool) == 1
        channel, stub = client.connect(server.address)
        with channel:
            assert [e.episode_id for e in client.list_all(stub)] == ["sample-2", "sample-3"]
        # Refused before anything was written: the store holds no shard without metadata.
        assert len(list((tmp_path / "store" / "shards").rglob("*.tfrecord"))) == 2
    finally:
        uploader.stop()
        server.stop(grace_s=0)


def test_an_episode_the_store_keeps_failing_on_goes_aside_once_others_get_through(tmp_path):
    # A plain file where the robot's shard folder belongs: the store answers INTERNAL for
    # that robot's episodes and stores the others.
    (tmp_path / "store" / "shards").mkdir(parents=True)
    (tmp_path / "store" / "shards" / "broken-arm").write_text("in the way")
    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))
    spool = EpisodeSpool(tmp_path / "spool", "kuka-strikes", max_strikes=2)
    uploader = Uploader(spool, lambda: server.address, timeout_s=5, retry_s=(0.05, 0.2)).start()
    try:
        uploader.submit(samples.sample_episode(1, robot_id="broken-arm"))
        # Alone, a failing episode says nothing about itself: it waits and is retried.
        assert not uploader.wait_idle(2)
        assert "INTERNAL" in uploader.last_error and spool.depth() == 1
        assert not list(spool.rejected.iterdir())
        # Behind it, episodes still reach the store; each time they do, it earns a strike.
        for seed in (2, 3):
            uploader.submit(samples.sample_episode(seed))
            assert until(lambda seed=seed: not (spool.root / f"sample-{seed}.episode").exists(), 20)
        assert uploader.wait_idle(20), uploader.last_error
        reason = (spool.rejected / "sample-1.episode.reason").read_text()
        assert "INTERNAL" in reason and "2 times while it stored others" in reason
        assert _rejected_gauge(spool) == 1
        channel, stub = client.connect(server.address)
        with channel:
            assert [e.episode_id for e in client.list_all(stub)] == ["sample-2", "sample-3"]
    finally:
        uploader.stop()
        server.stop(grace_s=0)


def test_a_spool_at_its_cap_is_full_and_keeps_every_episode(tmp_path):
    records = [samples.sample_episode(i) for i in range(3)]
    spool = EpisodeSpool(tmp_path, "kuka-cap", max_bytes=1)
    assert not spool.full()
    paths = [spool.put(r) for r in records]
    sizes = [p.stat().st_size for p in paths]
    assert spool.size_bytes() == sum(sizes) and spool.full()

    spool = EpisodeSpool(tmp_path, "kuka-cap", max_bytes=sum(sizes))
    assert spool.size_bytes() == sum(sizes) and spool.full()  # counted again after a restart
    spool.acknowledge(paths[0])
    assert not spool.full() and spool.size_bytes() == sum(sizes[1:])
    # A rejected episode still takes room on the disk.
    spool.reject(paths[1], "INVALID_ARGUMENT: test")
    assert spool.size_bytes() >= sum(sizes[1:]) and spool.depth() == 1
    assert REGISTRY.get_sample_value("graspfleet_spool_bytes", {"spool": "kuka-cap"}) == (
        spool.size_bytes()
    )
