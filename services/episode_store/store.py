"""The episode store's logic, independent of gRPC: ingest, read, label, query.

Ingest order makes a crash harmless: the shard is written and renamed into place
first, then the metadata row is committed in one transaction. Until that commit
the episode is invisible (every read goes through the metadata); a shard left
without a row by a crash is an orphan that `recovery.sweep` indexes later.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import timestamp_pb2

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import shards
from services.common import clock, logs
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.episode_store.metadata import (
    EpisodeConflict,
    EpisodeNotFound,
    MetadataStore,
    open_metadata_store,
)
from services.episode_store.validation import check_enum, check_timestamp

if TYPE_CHECKING:
    from services.episode_store.config import EpisodeStoreConfig

log = logs.get_logger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_LOCK_STRIPES = 64
# Sequences are signed 64-bit integers in both backends; a token past that was never issued.
_MAX_SEQUENCE = 2**63 - 1
_TOKEN_SEQUENCE = re.compile(r"[0-9]{1,19}")
# The episode id the readiness check looks up: any id does, found or not.
_CHECK_EPISODE_ID = "readiness-check"


def episode_digest(record: shards.EpisodeRecord) -> str:
    """SHA-256 over the episode's messages: equal for a resend, different for any change."""
    h = hashlib.sha256()
    for message in (record.header, *record.steps, record.outcome):
        data = message.SerializeToString(deterministic=True)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def label_from_outcome(
    record: shards.EpisodeRecord, now: timestamp_pb2.Timestamp
) -> common_pb2.Label:
    """The automatic label: success or failure as the robot reported, else unlabeled.

    An evaluation episode (attribute purpose=evaluation) stays unlabeled: it scores a
    model on objects no model may learn from, so it is never a training label, nor a
    grasp the rollout or the retraining counts (their store statistics count labels);
    its outcome stays in the episode for the evaluator.
    """
    result = record.outcome.result
    source = f"robot:{record.header.robot_id}"
    if record.header.attributes.get(shards.PURPOSE) == shards.EVALUATION:
        return common_pb2.Label(
            state=common_pb2.LABEL_STATE_UNLABELED,
            source=source,
            reason="an evaluation episode: it scores a model and is never a label",
            labeled_at=now,
        )
    if result in (common_pb2.GRASP_RESULT_SUCCESS, common_pb2.GRASP_RESULT_FAILURE):
        return common_pb2.Label(
            state=common_pb2.LABEL_STATE_AUTO,
            success=result == common_pb2.GRASP_RESULT_SUCCESS,
            source=source,
            reason="outcome reported by the robot",
            labeled_at=now,
        )
    return common_pb2.Label(
        state=common_pb2.LABEL_STATE_UNLABELED,
        source=source,
        reason=f"robot reported {common_pb2.GraspResult.Name(result)}",
        labeled_at=now,
    )


def summarize(
    record: shards.EpisodeRecord,
    shard: str,
    stored_bytes: int,
    now: timestamp_pb2.Timestamp,
    writer: str = "",
) -> episode_store_pb2.EpisodeSummary:
    """The metadata of an episode stored in `shard`, ingested at `now`, written by `writer`."""
    header, outcome = record.header, record.outcome
    step_models: dict[tuple[str, int], common_pb2.ModelRef] = {}
    for step in record.steps:
        if step.model.name:
            step_models.setdefault((step.model.name, step.model.version), step.model)
    summary = episode_store_pb2.EpisodeSummary(
        episode_id=header.episode_id,
        robot_id=header.robot_id,
        domain=header.domain,
        randomization=header.randomization,
        policy=header.policy,
        model=header.model,
        step_models=list(step_models.values()),
        num_steps=len(record.steps),
        result=outcome.result,
        object_ids=header.object_ids,
        object_set=header.object_set,
        seed=header.seed,
        collection_id=header.collection_id,
        started_at=header.started_at if header.HasField("started_at") else now,
        ingested_at=now,
        image_size=common_pb2.ImageSize(width=header.x0.width, height=header.x0.height),
        stored_bytes=stored_bytes,
        shard=shard,
        attributes=header.attributes,
        writer=writer,
    )
    if outcome.HasField("ended_at"):
        summary.ended_at.CopyFrom(outcome.ended_at)
    return summary


def encode_page_token(sequence: int) -> str:
    """The page token that continues after `sequence`."""
    return base64.urlsafe_b64encode(f"after:{sequence}".encode()).decode()


def decode_page_token(token: str) -> int:
    """The sequence a page token continues after; 0 for the first page."""
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        kind = value = ""
    if kind == "after" and _TOKEN_SEQUENCE.fullmatch(value) and int(value) <= _MAX_SEQUENCE:
        return int(value)
    # Only the start is quoted: the whole token may not fit in the status message.
    raise InvalidArgument(
        f"page_token {token[:64]!r} is not one this store issued; start again without it"
    )


class EpisodeStore:
    """Stores episodes as shards plus metadata.

    Args:
        data_root: Folder holding `shards/` and `staging/`.
        metadata: The metadata backend (SQLite or PostgreSQL).
        orphan_age_s: Shards without metadata are indexed, and staging files
            removed, by `recovery.sweep` once older than this; younger ones may
            belong to an ingest in progress (in this or another replica).
    """

    def __init__(
        self, data_root: Path, metadata: MetadataStore, orphan_age_s: float = 600.0
    ) -> None:
        self.files = shards.ShardDirectory(Path(data_root))
        self.metadata = metadata
        self.orphan_age_s = orphan_age_s
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def _lock(self, episode_id: str) -> threading.Lock:
        return self._locks[hash(episode_id) % _LOCK_STRIPES]

    def ingest(
        self, record: shards.EpisodeRecord, writer: str = ""
    ) -> episode_store_pb2.WriteEpisodeResponse:
        """Stores a validated episode once; a resend is acknowledged as a duplicate.

        `writer` is the identity the caller proved (empty without identities), recorded
        in the summary.

        Raises:
            AlreadyExists: another episode is stored under this id.
        """
        episode_id = record.header.episode_id
        digest = episode_digest(record)
        with self._lock(episode_id):
            stored = self.metadata.digest(episode_id)
            if stored is not None:
                return self._existing(episode_id, digest, stored)
            relative = self.files.relative_path(episode_id, digest, record.header.robot_id)
            size = self.files.write(relative, shards.encode(record))
            now = clock.now()
            try:
                result = self.metadata.insert(
                    summarize(record, relative, size, now, writer),
                    digest,
                    label_from_outcome(record, now),
                )
            except EpisodeConflict:
                # Another replica stored a different episode under this id meanwhile. The
                # shard this call just wrote is provably garbage: its name carries its own
                # digest, the id's one row holds another, and the client is told nothing
                # was stored.
                self.files.remove(relative)
                raise AlreadyExists(self._conflict_message(episode_id)) from None
        summary = result.summary
        if not result.duplicate:
            log.info(
                "episode stored",
                extra={"episode_id": episode_id, "steps": summary.num_steps, "bytes": size},
            )
        return episode_store_pb2.WriteEpisodeResponse(
            episode_id=episode_id,
            duplicate=result.duplicate,
            num_steps=summary.num_steps,
            label=summary.label,
            stored_bytes=summary.stored_bytes,
        )

    def _existing(
        self, episode_id: str, digest: str, stored: str
    ) -> episode_store_pb2.WriteEpisodeResponse:
        if stored != digest:
            raise AlreadyExists(self._conflict_message(episode_id))
        summary, _ = self.metadata.get(episode_id)
        return episode_store_pb2.WriteEpisodeResponse(
            episode_id=episode_id,
            duplicate=True,
            num_steps=summary.num_steps,
            label=summary.label,
            stored_bytes=summary.stored_bytes,
        )

    @staticmethod
    def _conflict_message(episode_id: str) -> str:
        return (
            f"episode {episode_id!r} is already stored with different content; episode ids are "
            "idempotency keys, so give a new episode a new id"
        )

    def get(self, episode_id: str, include_steps: bool) -> episode_store_pb2.GetEpisodeResponse:
        """The episode's summary and label history, with its header, steps and outcome if asked.

        Raises:
            NotFound: the store has no such episode.
        """
        try:
            summary, history = self.metadata.get(episode_id)
        except EpisodeNotFound:
            raise NotFound(f"no episode {episode_id!r} in the store") from None
        response = episode_store_pb2.GetEpisodeResponse(summary=summary, label_history=history)
        if include_steps:
            record = self.files.read(summary.shard)
            response.header.CopyFrom(record.header)
            response.steps.extend(record.steps)
            response.outcome.CopyFrom(record.outcome)
        return response

    def list(
        self, request: episode_store_pb2.ListEpisodesRequest
    ) -> episode_store_pb2.ListEpisodesResponse:
        """A page of episodes matching the request's filter, and the next page's token.

        Raises:
            InvalidArgument: a page size over MAX_PAGE_SIZE, a bad filter or page token.
        """
        if request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size={request.page_size}; at most {MAX_PAGE_SIZE}")
        check_filter(request.filter)
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        after = decode_page_token(request.page_token)
        # One extra row tells whether another page exists.
        rows = self.metadata.list(request.filter, page_size + 1, after)
        response = episode_store_pb2.ListEpisodesResponse(episodes=rows[:page_size])
        if len(rows) > page_size:
            response.next_page_token = encode_page_token(rows[page_size - 1].sequence)
        return response

    def relabel(
        self, request: episode_store_pb2.RelabelRequest
    ) -> episode_store_pb2.RelabelResponse:
        """Records a corrected label for an episode; returns its summary and label history.

        Raises:
            InvalidArgument: the request gives no source or no reason.
            NotFound: the store has no such episode.
        """
        if not request.source:
            raise InvalidArgument(
                "source is required: say who corrects the label (e.g. user:alice)"
            )
        if not request.reason:
            raise InvalidArgument("reason is required: say why the label changes")
        now = clock.now()
        label = common_pb2.Label(
            state=common_pb2.LABEL_STATE_RELABELED,
            success=request.success,
            source=request.source,
            reason=request.reason,
            labeled_at=now,
        )
        try:
            summary, history = self.metadata.relabel(request.episode_id, label)
        except EpisodeNotFound:
            raise NotFound(f"no episode {request.episode_id!r} in the store") from None
        log.info(
            "episode relabeled",
            extra={"episode_id": request.episode_id, "success": request.success},
        )
        return episode_store_pb2.RelabelResponse(summary=summary, label_history=history)

    def stats(self, request: episode_store_pb2.StatsRequest) -> episode_store_pb2.StatsResponse:
        """Counts and success rate of the episodes the request's filter matches.

        Raises:
            InvalidArgument: a bad filter.
        """
        check_filter(request.filter)
        return self.metadata.stats(request.filter)

    def check(self) -> str | None:
        """Why the store cannot store and serve episodes now, or None when it can.

        Cheap enough for every few seconds: the shard folders exist and take a file, and the
        metadata database answers a lookup by primary key.
        """
        for folder in (self.files.shards, self.files.staging):
            if not folder.is_dir():
                return f"the shard folder {folder} is missing (is its volume mounted?)"
            if not os.access(folder, os.W_OK | os.X_OK):
                return f"the shard folder {folder} is not writable"
        probe = self.files.staging / f"check-{uuid.uuid4().hex}.tmp"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()  # one left by a failure here is swept like any staging file
        except OSError as err:
            return f"cannot write to the shard volume: {err}"
        try:
            self.metadata.digest(_CHECK_EPISODE_ID)
        except Exception as err:  # noqa: BLE001 - any failure means the database is unusable
            return f"the metadata database {self.metadata.location} fails: {err}"
        return None

    def close(self) -> None:
        """Closes the metadata database."""
        self.metadata.close()


def check_filter(flt: episode_store_pb2.EpisodeFilter) -> None:
    """Refuses unknown enum values, out-of-range times and an empty time window in a filter."""
    check_enum("filter.domain", common_pb2.Domain, flt.domain, allow_unspecified=True)
    check_enum("filter.label_state", common_pb2.LabelState, flt.label_state, allow_unspecified=True)
    check_enum(
        "filter.randomization", common_pb2.Randomization, flt.randomization, allow_unspecified=True
    )
    for name in ("since", "until"):
        if flt.HasField(name):
            check_timestamp(f"filter.{name}", getattr(flt, name))
    if (
        flt.HasField("since")
        and flt.HasField("until")
        and flt.until.ToNanoseconds() <= flt.since.ToNanoseconds()
    ):
        raise InvalidArgument("filter.until must be after filter.since")


def open_episode_store(config: EpisodeStoreConfig) -> EpisodeStore:
    """Opens the shard folder and the metadata backend that `config` names; checks nothing.

    Args:
        config: Where the shards live (`data_dir`) and which database holds the metadata
            (`postgres_dsn`, else `episodes.sqlite` in `data_dir`).

    Returns:
        The store, before any consistency check (see `recovery`).
    """
    root = Path(config.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    if config.postgres_dsn:
        metadata = open_metadata_store(postgres_dsn=config.postgres_dsn)
    else:
        metadata = open_metadata_store(sqlite_path=str(root / "episodes.sqlite"))
    return EpisodeStore(root, metadata, orphan_age_s=config.orphan_age_s)
