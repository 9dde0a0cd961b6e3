"""Metadata from the shards: refuse an empty database, index orphan shards, rebuild the index.

Every shard carries its episode's header, steps and outcome, so the metadata can
be derived from the shards alone; only relabels live in the database and nowhere
else. The store therefore never deletes a shard it cannot prove is garbage: a
shard without a row is indexed, and one that cannot be parsed, fails validation
or clashes with a stored episode is moved to `quarantine/` with the reason
beside it. A database that holds no episode while the shard folder holds some is
a new or the wrong database; the store refuses to start on it.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from google.protobuf import timestamp_pb2

from models.episodes.shards import EpisodeRecord
from services.common import logs
from services.common.config import load_config
from services.episode_store import validation
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.metadata import EpisodeConflict
from services.episode_store.store import (
    EpisodeStore,
    episode_digest,
    label_from_outcome,
    open_episode_store,
    summarize,
)

log = logs.get_logger(__name__)

REBUILD_COMMAND = "graspfleet store rebuild-index"

# Shards passed the limits of the day they were stored; recovery checks their structure
# again, not today's limits, so that lowering a limit never quarantines stored episodes.
_NO_LIMITS = validation.Limits(
    max_steps=sys.maxsize, max_image_side=sys.maxsize, max_episode_bytes=sys.maxsize
)


class MetadataMissing(Exception):
    """The metadata database holds no episode while the shard folder holds some."""


@dataclasses.dataclass
class IndexReport:
    """What `index_shards` did.

    Attributes:
        scanned: Shard files found under `shards/`.
        indexed: Shards that had no row and have one now.
        present: Shards whose episode was indexed already.
        young: Shards without a row left alone because an ingest may still be committing them.
        quarantined: (shard, reason) for every shard moved to `quarantine/`.
    """

    scanned: int = 0
    indexed: int = 0
    present: int = 0
    young: int = 0
    quarantined: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def check_metadata_present(store: EpisodeStore) -> None:
    """Refuses a metadata database that holds no episode when the shard folder holds some.

    Raises:
        MetadataMissing: The database is empty and shards exist; the message says what to do.
    """
    if store.metadata.count():
        return
    shards = len(store.files.files())
    if not shards:
        return
    raise MetadataMissing(
        f"{store.metadata.location} holds no episodes but {store.files.shards} holds {shards} "
        f"shard{'s' if shards != 1 else ''}: it is a new or the wrong database, and starting "
        "on it would hide every episode. If it is the wrong one, point --postgres-dsn "
        "(GRASPFLEET_POSTGRES_DSN) or --data-dir at the right database. If it is right (a lost "
        "database volume, a restored backup, a move to PostgreSQL), rebuild the metadata from "
        f"the shards with `{REBUILD_COMMAND}` and the same settings, then start the store again."
    )


def index_shards(store: EpisodeStore, *, min_age_s: float = 0.0) -> IndexReport:
    """Indexes every shard older than `min_age_s` that no stored episode refers to.

    Idempotent: a shard whose episode is stored already is left alone, so a second run
    adds nothing. Shards go in oldest first, so the new rows' sequences (the order of
    ListEpisodes) follow the order the episodes arrived in.

    Args:
        store: The store whose shards and metadata to reconcile.
        min_age_s: Shards younger than this are skipped: an ingest may be committing them.

    Returns:
        What was indexed, found indexed, skipped and quarantined.

    Raises:
        MetadataError, sqlite3.Error, psycopg.Error, OSError: the database or the disk failed;
            nothing is quarantined for that, and a new run continues where this one stopped.
    """
    cutoff = time.time() - min_age_s
    referenced = store.metadata.shards()
    report = IndexReport()
    for relative, mtime in sorted(store.files.files(), key=lambda f: (f[1], f[0])):
        report.scanned += 1
        if relative in referenced:
            report.present += 1
        elif mtime >= cutoff:
            report.young += 1
        else:
            reason = _index(store, relative, mtime)
            if reason is None:
                report.indexed += 1
            elif store.files.quarantine(relative, reason) is not None:
                report.quarantined.append((relative, reason))
                log.warning("shard quarantined", extra={"shard": relative, "reason": reason})
    return report


def _index(store: EpisodeStore, relative: str, mtime: float) -> str | None:
    """Gives one shard its metadata row; returns why it cannot be indexed, or None."""
    try:
        record = store.files.read(relative)
        _validate(record)
    except OSError:
        raise  # the disk, not the shard: quarantining would hide a good episode
    except Exception as err:  # noqa: BLE001 - TF, protobuf and validation each raise their own
        return f"cannot be indexed: {type(err).__name__}: {err}"
    # The shard's modification time is when it was renamed into place: the ingest time.
    at = timestamp_pb2.Timestamp()
    at.FromNanoseconds(int(mtime * 1e9))
    episode_id = record.header.episode_id
    size = (store.files.root / relative).stat().st_size
    try:
        result = store.metadata.insert(
            summarize(record, relative, size, at),
            episode_digest(record),
            label_from_outcome(record, at),
        )
    except EpisodeConflict:
        stored, _ = store.metadata.get(episode_id)
        return (
            f"episode {episode_id!r} is stored with other content in {stored.shard}; "
            "this shard holds a different episode under the same id"
        )
    if result.duplicate and result.summary.shard != relative:
        return f"a second copy of episode {episode_id!r}, which is stored in {result.summary.shard}"
    return None


def _validate(record: EpisodeRecord) -> None:
    validation.check_header(record.header, _NO_LIMITS)
    for index, step in enumerate(record.steps):
        validation.check_step(step, index, record.header, _NO_LIMITS)
    validation.check_outcome(record.outcome, len(record.steps))


def sweep(store: EpisodeStore) -> IndexReport:
    """Removes staging leftovers and indexes orphan shards, both older than `orphan_age_s`.

    A staging file older than that is garbage: it was never renamed into place, and an
    episode is acknowledged only after its shard is renamed and its row committed.
    """
    cutoff = time.time() - store.orphan_age_s
    removed = 0
    for path, mtime in store.files.staging_files():
        if mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    report = index_shards(store, min_age_s=store.orphan_age_s)
    if removed or report.indexed or report.quarantined:
        log.info(
            "swept staging files and orphan shards",
            extra={
                "staging_removed": removed,
                "orphans_indexed": report.indexed,
                "quarantined": len(report.quarantined),
            },
        )
    return report


def main(argv: list[str] | None = None) -> int:
    """`graspfleet store rebuild-index`: indexes every shard the metadata lacks; safe to rerun."""
    config = load_config(EpisodeStoreConfig, REBUILD_COMMAND, argv)
    logs.configure_logging("episode-store-rebuild", config.log_level, config.log_format)
    store = open_episode_store(config)
    try:
        report = index_shards(store)
    finally:
        store.close()
    print(
        f"{report.scanned} shards in {store.files.shards}: {report.indexed} indexed now, "
        f"{report.present} indexed already, {len(report.quarantined)} quarantined"
    )
    for relative, reason in report.quarantined:
        print(f"  quarantined {relative}: {reason}")
    if report.quarantined:
        print(f"quarantined shards and their reasons are in {store.files.quarantined}")
    return 0
