"""Shards outlive their metadata: a new, empty or restored database loses no episode."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import shards
from models.episodes import synthetic as samples
from services import cli
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.recovery import MetadataMissing
from services.episode_store.server import create_server
from services.episode_store.store import episode_digest

# Older than the store's default orphan_age_s (600 s): what the sweep used to delete.
AN_HOUR_S = 3600


def _records() -> list:
    return [samples.sample_episode(i, robot_id=f"kuka-0{i % 2 + 1}", num_steps=3) for i in range(6)]


def _write(flags: dict, records: list) -> None:
    server = create_server(EpisodeStoreConfig(port=0, **flags))
    try:
        channel, stub = client.connect(server.address)
        with channel:
            for record in records:
                assert not client.write_episode(stub, record).duplicate
    finally:
        server.stop(grace_s=0)


def _shard_files(data_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(data_dir)): p.read_bytes()
        for p in (data_dir / "shards").rglob(f"*{shards.SHARD_SUFFIX}")
    }


def _age(data_dir: Path, seconds: float) -> None:
    """Moves every shard's modification time back, keeping their order."""
    for path in (data_dir / "shards").rglob(f"*{shards.SHARD_SUFFIX}"):
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - int(seconds * 1e9)))


def _assert_all_readable(flags: dict, records: list) -> None:
    server = create_server(EpisodeStoreConfig(port=0, **flags))
    try:
        channel, stub = client.connect(server.address)
        with channel:
            assert stub.Stats(episode_store_pb2.StatsRequest()).episodes == len(records)
            listed = list(client.list_all(stub, page_size=4))
            assert [e.episode_id for e in listed] == [r.header.episode_id for r in records]
            for record, summary in zip(records, listed, strict=True):
                assert summary.label.state == common_pb2.LABEL_STATE_AUTO
                assert summary.label.success == (
                    record.outcome.result == common_pb2.GRASP_RESULT_SUCCESS
                )
                full = stub.GetEpisode(
                    episode_store_pb2.GetEpisodeRequest(
                        episode_id=record.header.episode_id, include_steps=True
                    )
                )
                assert full.header == record.header and list(full.steps) == list(record.steps)
                assert full.outcome == record.outcome
            # The robots still spool what they sent: a resend is a duplicate, not a clash.
            assert client.write_episode(stub, records[0]).duplicate
    finally:
        server.stop(grace_s=0)


def _rebuild(flags: dict, capsys) -> str:
    argv = ["store", "rebuild-index", "--log-format", "text"]
    for name, value in flags.items():
        argv += [f"--{name.replace('_', '-')}", value]
    assert cli.main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "database", ["new-sqlite", pytest.param("empty-postgres", marks=pytest.mark.postgres)]
)
def test_a_new_or_empty_database_deletes_no_shard_and_rebuild_index_restores_every_episode(
    database, tmp_path, request, capsys
):
    data_dir = tmp_path / "store"
    records = _records()
    _write({"data_dir": str(data_dir)}, records)
    _age(data_dir, AN_HOUR_S)
    before = _shard_files(data_dir)
    assert len(before) == len(records)
    if database == "new-sqlite":  # the database volume was lost: a fresh file next to the shards
        for path in data_dir.glob("episodes.sqlite*"):
            path.rename(tmp_path / path.name)
        flags = {"data_dir": str(data_dir)}
        where = "SQLite file"
    else:  # a move to PostgreSQL, or a DSN that names the wrong (empty) database
        flags = {
            "data_dir": str(data_dir),
            "postgres_dsn": request.getfixturevalue("postgres_database"),
        }
        where = "PostgreSQL database"

    with pytest.raises(MetadataMissing) as refused:
        create_server(EpisodeStoreConfig(port=0, **flags))
    message = str(refused.value)
    assert where in message and "graspfleet store rebuild-index" in message
    assert f"holds {len(records)} shards" in message
    assert _shard_files(data_dir) == before  # not one shard deleted or moved

    assert "6 indexed now, 0 indexed already, 0 quarantined" in _rebuild(flags, capsys)
    # Idempotent: a second run finds everything indexed and adds nothing.
    assert "0 indexed now, 6 indexed already, 0 quarantined" in _rebuild(flags, capsys)
    assert _shard_files(data_dir) == before
    _assert_all_readable(flags, records)


def test_a_restored_backup_gets_back_the_episodes_stored_after_it(tmp_path):
    data_dir = tmp_path / "store"
    flags = {"data_dir": str(data_dir)}
    records = _records()
    _write(flags, records[:3])
    with (
        sqlite3.connect(data_dir / "episodes.sqlite") as live,
        sqlite3.connect(tmp_path / "backup.sqlite") as backup,
    ):
        live.backup(backup)
    _write(flags, records[3:])
    for path in data_dir.glob("episodes.sqlite*"):
        path.unlink()
    (tmp_path / "backup.sqlite").rename(data_dir / "episodes.sqlite")
    _age(data_dir, AN_HOUR_S)
    before = _shard_files(data_dir)

    # The sweep at start indexes the three shards the backup does not know.
    _assert_all_readable(flags, records)
    assert _shard_files(data_dir) == before


def test_shards_that_cannot_be_indexed_are_quarantined_with_their_reason(tmp_path):
    data_dir = tmp_path / "store"
    flags = {"data_dir": str(data_dir)}
    records = _records()[:2]
    _write(flags, records)
    files = shards.ShardDirectory(data_dir)
    planted = {}
    # Bytes that are no shard at all.
    planted["junk"] = "shards/kuka-01/junk.0000000000000000.tfrecord"
    (data_dir / planted["junk"]).write_bytes(b"not a TFRecord")
    # Another episode under a stored episode's id.
    clash = samples.sample_episode(99, episode_id=records[0].header.episode_id, robot_id="kuka-01")
    planted["clash"] = files.relative_path("sample-0", episode_digest(clash), "kuka-01")
    files.write(planted["clash"], shards.encode(clash))
    # What a store without timestamp validation left behind for an out-of-range start time.
    poison = samples.sample_episode(7, robot_id="kuka-02")
    poison.header.started_at.seconds = 253402300800
    planted["poison"] = files.relative_path("sample-7", episode_digest(poison), "kuka-02")
    files.write(planted["poison"], shards.encode(poison))
    # An orphan a crash left between the rename and the commit: it is a good episode.
    orphan = samples.sample_episode(8, robot_id="kuka-02", num_steps=3)
    files.write(
        files.relative_path("sample-8", episode_digest(orphan), "kuka-02"), shards.encode(orphan)
    )
    _age(data_dir, AN_HOUR_S)
    contents = {name: (data_dir / path).read_bytes() for name, path in planted.items()}

    _assert_all_readable(flags, [*records, orphan])

    for name, path in planted.items():
        assert not (data_dir / path).exists(), name
        moved = data_dir / "quarantine" / Path(path).relative_to("shards")
        assert moved.read_bytes() == contents[name], name
        reason = moved.with_name(moved.name + ".reason").read_text()
        assert {
            "junk": "cannot be indexed",
            "clash": "stored with other content",
            "poison": "header.started_at.seconds=253402300800",
        }[name] in reason, reason
    # A second start finds nothing more to do and quarantines nothing twice.
    quarantined = sorted((data_dir / "quarantine").rglob("*"))
    _assert_all_readable(flags, [*records, orphan])
    assert sorted((data_dir / "quarantine").rglob("*")) == quarantined
