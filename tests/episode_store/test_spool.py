"""The spool keeps episodes on disk while the store is away and delivers each exactly once."""

from __future__ import annotations

import socket

from graspfleet.v1 import episode_store_pb2
from services.episode_store import client, samples
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server
from services.episode_store.spool import EpisodeSpool, Uploader


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
