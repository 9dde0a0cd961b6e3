"""Episode metadata in SQLite or PostgreSQL: summaries, label history, filters and stats."""

# Annotations stay unevaluated: the method named `list` would otherwise shadow the builtin in
# the annotations of the methods defined after it.
from __future__ import annotations

import abc
import contextlib
import dataclasses
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import psycopg
from google.protobuf import timestamp_pb2
from psycopg.conninfo import conninfo_to_dict

from graspfleet.v1 import common_pb2, episode_store_pb2

SCHEMA_VERSION = 1

# How long a caller waits for a free pooled connection before the store reports itself busy.
_ACQUIRE_TIMEOUT_S = 30.0

_UNLABELED = common_pb2.LABEL_STATE_UNLABELED
_LABELED_STATES = f"({common_pb2.LABEL_STATE_AUTO}, {common_pb2.LABEL_STATE_RELABELED})"
_STORABLE_STATES = frozenset(
    (_UNLABELED, common_pb2.LABEL_STATE_AUTO, common_pb2.LABEL_STATE_RELABELED)
)


class MetadataError(Exception):
    """The metadata store could not do what was asked."""


class EpisodeConflict(MetadataError):
    """An episode id is already stored with different content (another digest)."""


class EpisodeNotFound(MetadataError):
    """No episode is stored under the id."""


@dataclasses.dataclass(frozen=True)
class InsertResult:
    """What `MetadataStore.insert` did.

    Attributes:
        duplicate: True when the id was already stored with the same digest; nothing changed.
        summary: The stored summary, with its label and sequence filled.
    """

    duplicate: bool
    summary: episode_store_pb2.EpisodeSummary


@dataclasses.dataclass(frozen=True)
class _Dialect:
    """The SQL spellings that differ between the backends; everything else is shared."""

    placeholder: str
    sequence_key: str
    boolean: str
    blob: str


# Column types and the sequence key come from the dialect. No query orders by text (stats sorts
# its groups in Python), so the database's collation never matters.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS episodes (
        sequence {sequence_key},
        episode_id TEXT NOT NULL UNIQUE,
        digest TEXT NOT NULL,
        robot_id TEXT NOT NULL,
        domain INTEGER NOT NULL,
        randomization INTEGER NOT NULL,
        policy TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version BIGINT NOT NULL,
        object_set TEXT NOT NULL,
        collection_id TEXT NOT NULL,
        started_at_us BIGINT,
        ingested_at_us BIGINT,
        num_steps INTEGER NOT NULL,
        stored_bytes BIGINT NOT NULL,
        shard TEXT NOT NULL,
        label_state INTEGER NOT NULL,
        label_success {boolean} NOT NULL,
        summary {blob} NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS episode_models (
        episode_id TEXT NOT NULL REFERENCES episodes (episode_id),
        model_name TEXT NOT NULL,
        model_version BIGINT NOT NULL,
        PRIMARY KEY (episode_id, model_name, model_version)
    )""",
    """CREATE TABLE IF NOT EXISTS label_history (
        episode_id TEXT NOT NULL REFERENCES episodes (episode_id),
        position INTEGER NOT NULL,
        state INTEGER NOT NULL,
        success {boolean} NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        labeled_at_us BIGINT,
        PRIMARY KEY (episode_id, position)
    )""",
    "CREATE INDEX IF NOT EXISTS episodes_robot_id ON episodes (robot_id)",
    "CREATE INDEX IF NOT EXISTS episodes_domain ON episodes (domain)",
    "CREATE INDEX IF NOT EXISTS episodes_started_at ON episodes (started_at_us)",
    "CREATE INDEX IF NOT EXISTS episodes_label_state ON episodes (label_state)",
    "CREATE INDEX IF NOT EXISTS episodes_collection_id ON episodes (collection_id)",
    "CREATE INDEX IF NOT EXISTS episode_models_model ON episode_models (model_name, model_version)",
)

_EPISODE_COLUMNS = (
    "episode_id",
    "digest",
    "robot_id",
    "domain",
    "randomization",
    "policy",
    "model_name",
    "model_version",
    "object_set",
    "collection_id",
    "started_at_us",
    "ingested_at_us",
    "num_steps",
    "stored_bytes",
    "shard",
    "label_state",
    "label_success",
    "summary",
)
_INSERT_EPISODE = (
    f"INSERT INTO episodes ({', '.join(_EPISODE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_EPISODE_COLUMNS))}) RETURNING sequence"
)
_INSERT_LABEL = (
    "INSERT INTO label_history "
    "(episode_id, position, state, success, source, reason, labeled_at_us) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_HISTORY = (
    "SELECT state, success, source, reason, labeled_at_us FROM label_history "
    "WHERE episode_id = ? ORDER BY position"
)
# Summaries with their current label: the history entry with the highest position.
_SELECT_SUMMARIES = (
    "SELECT e.sequence, e.summary, h.state, h.success, h.source, h.reason, h.labeled_at_us "
    "FROM episodes e JOIN label_history h ON h.episode_id = e.episode_id AND h.position = "
    "(SELECT MAX(position) FROM label_history WHERE episode_id = e.episode_id)"
)
_SELECT_GROUPS = (
    "SELECT e.robot_id, e.domain, e.model_name, e.model_version, COUNT(*), SUM(e.num_steps), "
    f"SUM(CASE WHEN e.label_state IN {_LABELED_STATES} THEN 1 ELSE 0 END), "
    f"SUM(CASE WHEN e.label_state IN {_LABELED_STATES} AND e.label_success THEN 1 ELSE 0 END), "
    "SUM(e.stored_bytes) FROM episodes e"
)
_GROUP_BY = " GROUP BY e.robot_id, e.domain, e.model_name, e.model_version"


class _Transaction:
    """One open transaction: runs the shared SQL (written with `?`) in the backend's style."""

    def __init__(self, cursor: Any, placeholder: str) -> None:
        self._cursor = cursor
        self._placeholder = placeholder

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        # Without parameters, both drivers run the statement as it is (psycopg then uses the
        # simple query protocol; sqlite3 refuses None for "no parameters").
        if params:
            self._cursor.execute(sql, tuple(params))
        else:
            self._cursor.execute(sql)
        return self._cursor


class _ConnectionPool:
    """A bounded, thread-safe pool of database connections, opened on demand."""

    def __init__(self, connect: Callable[[], Any], size: int) -> None:
        self._connect = connect
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> Any:
        if self._closed:
            raise MetadataError("the metadata store is closed")
        if not self._slots.acquire(timeout=_ACQUIRE_TIMEOUT_S):
            raise MetadataError(
                f"no database connection came free within {_ACQUIRE_TIMEOUT_S:.0f} s"
            )
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        try:
            return self._connect()
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: Any, *, reusable: bool) -> None:
        """Takes a connection back; one in an unknown state is closed rather than reused."""
        with self._lock:
            keep = reusable and not self._closed
            if keep:
                self._idle.put(conn)
        if not keep:
            with contextlib.suppress(Exception):
                conn.close()
        self._slots.release()

    def close(self) -> None:
        """Closes the idle connections now and the busy ones when they come back."""
        with self._lock:
            self._closed = True
            while not self._idle.empty():
                with contextlib.suppress(Exception):
                    self._idle.get_nowait().close()


class MetadataStore(abc.ABC):
    """Episode summaries and label histories, queryable by filter.

    The SQL and the row <-> proto mapping live here; a backend supplies its dialect, how to open
    a connection and how to begin a transaction. Every public method is thread-safe and runs in
    one transaction.
    """

    _dialect: ClassVar[_Dialect]
    # The error the backend raises when an insert hits the UNIQUE constraint on episode_id.
    _unique_violation: ClassVar[type[Exception]]

    def __init__(self, pool_size: int) -> None:
        self._pool = _ConnectionPool(self._connect, pool_size)
        try:
            self._create_schema()
        except BaseException:
            self._pool.close()
            raise

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Which database this is, for messages to a person (no password)."""

    @abc.abstractmethod
    def _connect(self) -> Any:
        """Opens a connection, ready for `_begin`."""

    @abc.abstractmethod
    def _begin(self, conn: Any, *, write: bool) -> None:
        """Starts a transaction on `conn`."""

    @abc.abstractmethod
    def _serialize_inserts(self, tx: _Transaction) -> None:
        """Blocks other inserting transactions until this one ends.

        Sequences are then handed out in commit order, so a reader paging by `after_sequence`
        never skips an episode whose smaller sequence committed after a larger one.
        """

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[_Transaction]:
        conn = self._pool.acquire()
        reusable = False
        try:
            self._begin(conn, write=write)
            cursor = conn.cursor()
            try:
                yield _Transaction(cursor, self._dialect.placeholder)
            except BaseException:
                # A connection that cannot even roll back is broken: the pool drops it.
                with contextlib.suppress(Exception):
                    conn.rollback()
                    reusable = True
                raise
            finally:
                cursor.close()
            conn.commit()
            reusable = True
        finally:
            self._pool.release(conn, reusable=reusable)

    def _create_schema(self) -> None:
        with self._transaction(write=True) as tx:
            # Several processes may open a fresh database at once.
            self._serialize_inserts(tx)
            for statement in _SCHEMA:
                tx.execute(statement.format(**dataclasses.asdict(self._dialect)))
            row = tx.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                tx.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise MetadataError(
                    f"the database has metadata schema version {row[0]}; "
                    f"this build reads version {SCHEMA_VERSION}"
                )

    def insert(
        self,
        summary: episode_store_pb2.EpisodeSummary,
        digest: str,
        label: common_pb2.Label,
    ) -> InsertResult:
        """Stores an episode's summary with its first label, once per episode id.

        Args:
            summary: The episode; its `label` and `sequence` are ignored (the store sets them).
            digest: Fingerprint of the episode's content, compared on a repeated insert.
            label: The first entry of the label history.

        Returns:
            The stored summary, and whether the id was already stored with this digest (then
            nothing changed and `label` was not recorded).

        Raises:
            EpisodeConflict: The id is stored with another digest.
            ValueError: No episode id, or a label without a state.
        """
        if not summary.episode_id:
            raise ValueError("an episode needs an episode_id")
        _check_label(label)
        try:
            with self._transaction(write=True) as tx:
                self._serialize_inserts(tx)
                if _select_digest(tx, summary.episode_id) is None:
                    return InsertResult(False, _insert(tx, summary, digest, label))
        except self._unique_violation:
            pass  # Another writer stored the id between our check and our insert.
        with self._transaction() as tx:
            stored_digest = _select_digest(tx, summary.episode_id)
            if stored_digest != digest:
                raise EpisodeConflict(
                    f"episode {summary.episode_id!r} is already stored with other content "
                    f"(digest {stored_digest}, not {digest})"
                )
            stored, _ = _select_episode(tx, summary.episode_id)
        return InsertResult(True, stored)

    def get(
        self, episode_id: str
    ) -> tuple[episode_store_pb2.EpisodeSummary, list[common_pb2.Label]]:
        """Returns an episode's summary and its label history, oldest first.

        Raises:
            EpisodeNotFound: No episode has this id.
        """
        with self._transaction() as tx:
            return _select_episode(tx, episode_id)

    def list(
        self, flt: episode_store_pb2.EpisodeFilter, page_size: int, after_sequence: int
    ) -> list[episode_store_pb2.EpisodeSummary]:
        """Returns one page of the episodes that match a filter, in ingest order.

        Args:
            flt: Which episodes; empty fields match anything. `flt.model.label` is not
                resolved here: the caller turns labels into versions.
            page_size: The most episodes to return (at least 1).
            after_sequence: Only episodes with a larger sequence (0 for the first page).

        Returns:
            Summaries ordered by sequence, ascending.

        Raises:
            ValueError: A page size below 1.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        clauses, params = _where(flt)
        clauses.append("e.sequence > ?")
        params.append(after_sequence)
        sql = f"{_SELECT_SUMMARIES} WHERE {' AND '.join(clauses)} ORDER BY e.sequence LIMIT ?"
        with self._transaction() as tx:
            rows = tx.execute(sql, [*params, page_size]).fetchall()
        return [_summary_from(row[0], row[1], _label_from(row[2:])) for row in rows]

    def relabel(
        self, episode_id: str, label: common_pb2.Label
    ) -> tuple[episode_store_pb2.EpisodeSummary, list[common_pb2.Label]]:
        """Makes `label` the episode's current label, keeping the earlier ones in its history.

        Returns:
            The summary with the new label and the whole history, oldest first.

        Raises:
            EpisodeNotFound: No episode has this id.
            ValueError: A label without a state.
        """
        _check_label(label)
        with self._transaction(write=True) as tx:
            # The UPDATE comes first: its row lock makes concurrent relabels of one episode wait
            # for each other, so each sees the other's history entry when picking a position.
            updated = tx.execute(
                "UPDATE episodes SET label_state = ?, label_success = ? WHERE episode_id = ?",
                (label.state, label.success, episode_id),
            ).rowcount
            if updated == 0:
                raise EpisodeNotFound(f"no episode {episode_id!r}")
            (position,) = tx.execute(
                "SELECT MAX(position) + 1 FROM label_history WHERE episode_id = ?", (episode_id,)
            ).fetchone()
            _insert_label(tx, episode_id, position, label)
            return _select_episode(tx, episode_id)

    def stats(self, flt: episode_store_pb2.EpisodeFilter) -> episode_store_pb2.StatsResponse:
        """Counts the episodes that match a filter, in total and by robot, domain and model.

        Groups are keyed by the model in the episode's header and ordered by robot id, domain,
        model name and model version.
        """
        clauses, params = _where(flt)
        sql = _SELECT_GROUPS
        if clauses:
            sql += f" WHERE {' AND '.join(clauses)}"
        with self._transaction() as tx:
            rows = tx.execute(sql + _GROUP_BY, params).fetchall()
        response = episode_store_pb2.StatsResponse()
        # Sorted here rather than in SQL: PostgreSQL's text order follows the database's
        # collation, and both backends must list groups alike.
        for robot_id, domain, name, version, episodes, steps, labeled, successes, size in sorted(
            rows, key=lambda row: tuple(row[:4])
        ):
            # PostgreSQL sums BIGINT columns as NUMERIC (Decimal in Python).
            labeled, successes = int(labeled), int(successes)
            response.groups.add(
                robot_id=robot_id,
                domain=domain,
                model=common_pb2.ModelRef(name=name, version=version),
                episodes=episodes,
                labeled=labeled,
                successes=successes,
                success_rate=_rate(successes, labeled),
            )
            response.episodes += episodes
            response.steps += int(steps)
            response.labeled += labeled
            response.successes += successes
            response.stored_bytes += int(size)
        response.success_rate = _rate(response.successes, response.labeled)
        return response

    def digest(self, episode_id: str) -> str | None:
        """Returns the digest stored for an episode, or None when the id is not stored."""
        with self._transaction() as tx:
            return _select_digest(tx, episode_id)

    def shards(self) -> set[str]:
        """Returns every shard path that a stored episode refers to (for the orphan sweep)."""
        with self._transaction() as tx:
            rows = tx.execute("SELECT DISTINCT shard FROM episodes WHERE shard != ''").fetchall()
        return {shard for (shard,) in rows}

    def count(self) -> int:
        """Returns the number of stored episodes."""
        with self._transaction() as tx:
            return tx.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]

    def close(self) -> None:
        """Closes the store's connections; the store cannot be used afterwards."""
        self._pool.close()


class SqliteMetadataStore(MetadataStore):
    """Metadata in one SQLite file (WAL mode), for a single host."""

    _dialect = _Dialect(
        placeholder="?",
        # AUTOINCREMENT never hands out a sequence twice, even after the largest row is deleted.
        sequence_key="INTEGER PRIMARY KEY AUTOINCREMENT",
        boolean="INTEGER",
        blob="BLOB",
    )
    _unique_violation = sqlite3.IntegrityError

    def __init__(self, path: str, *, pool_size: int = 8, busy_timeout_s: float = 30.0) -> None:
        """Opens the store, creating the file and the schema when needed.

        Args:
            path: The database file (not ":memory:": every pooled connection must see it).
            pool_size: The most connections open at once.
            busy_timeout_s: How long a statement waits for another writer's lock.
        """
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        super().__init__(pool_size)

    @property
    def location(self) -> str:
        """The SQLite file's path, for messages to a person."""
        return f"the SQLite file {self._path}"

    def _connect(self) -> sqlite3.Connection:
        # timeout= sets SQLite's busy_timeout. isolation_level=None: _begin starts transactions
        # explicitly. The pool hands a connection to one thread at a time, so it may move
        # between threads.
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL syncs the WAL at every commit. NORMAL would be safe against a crash of the process
        # but could lose the last commits on power loss, and robots delete an episode from their
        # spool once the store acknowledged it: an acknowledged episode must be on disk.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _begin(self, conn: sqlite3.Connection, *, write: bool) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades
        # from reading to writing fails with SQLITE_BUSY at once instead of waiting.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _serialize_inserts(self, tx: _Transaction) -> None:
        pass  # BEGIN IMMEDIATE already holds the database's single write lock.


class PostgresMetadataStore(MetadataStore):
    """Metadata in a PostgreSQL database, shared by a fleet of store replicas."""

    _dialect = _Dialect(
        placeholder="%s",
        sequence_key="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        boolean="BOOLEAN",
        blob="BYTEA",
    )
    _unique_violation = psycopg.errors.UniqueViolation
    # Key of the transaction-scoped advisory lock that serializes inserts (any constant would do).
    _INSERT_LOCK_KEY = 0x6772_6173_70  # "grasp"

    def __init__(self, dsn: str, *, pool_size: int = 8) -> None:
        """Opens the store, creating the schema when needed.

        Args:
            dsn: A libpq connection string or URI.
            pool_size: The most connections open at once.
        """
        self._dsn = dsn
        super().__init__(pool_size)

    @property
    def location(self) -> str:
        """The PostgreSQL database's name and host, for messages to a person (no password)."""
        params = conninfo_to_dict(self._dsn)
        host = params.get("host") or "the default host"
        return f"the PostgreSQL database {params.get('dbname', '(default)')!r} on {host}"

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self._dsn, autocommit=False)

    def _begin(self, conn: psycopg.Connection, *, write: bool) -> None:
        pass  # With autocommit off, the first statement opens the transaction.

    def _serialize_inserts(self, tx: _Transaction) -> None:
        tx.execute(f"SELECT pg_advisory_xact_lock({self._INSERT_LOCK_KEY})")


def open_metadata_store(
    *, sqlite_path: str | None = None, postgres_dsn: str | None = None
) -> MetadataStore:
    """Opens the metadata store of one backend.

    Args:
        sqlite_path: A SQLite database file.
        postgres_dsn: A PostgreSQL connection string.

    Returns:
        The open store.

    Raises:
        ValueError: Not exactly one of the two was given.
    """
    if (sqlite_path is None) == (postgres_dsn is None):
        raise ValueError("give exactly one of sqlite_path and postgres_dsn")
    if sqlite_path is not None:
        return SqliteMetadataStore(sqlite_path)
    return PostgresMetadataStore(postgres_dsn)


def _check_label(label: common_pb2.Label) -> None:
    if label.state not in _STORABLE_STATES:
        raise ValueError(f"a stored label needs a state, not {label.state}")


def _micros(message: Any, field: str) -> int | None:
    return getattr(message, field).ToMicroseconds() if message.HasField(field) else None


def _timestamp(micros: int) -> timestamp_pb2.Timestamp:
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromMicroseconds(micros)
    return timestamp


def _rate(successes: int, labeled: int) -> float:
    return successes / labeled if labeled else 0.0


def _label_from(row: Sequence[Any]) -> common_pb2.Label:
    state, success, source, reason, labeled_at_us = row
    label = common_pb2.Label(state=state, success=bool(success), source=source, reason=reason)
    if labeled_at_us is not None:
        label.labeled_at.CopyFrom(_timestamp(labeled_at_us))
    return label


def _summary_from(
    sequence: int, blob: bytes, label: common_pb2.Label
) -> episode_store_pb2.EpisodeSummary:
    summary = episode_store_pb2.EpisodeSummary.FromString(bytes(blob))
    summary.sequence = sequence
    summary.label.CopyFrom(label)
    return summary


def _select_digest(tx: _Transaction, episode_id: str) -> str | None:
    row = tx.execute("SELECT digest FROM episodes WHERE episode_id = ?", (episode_id,)).fetchone()
    return None if row is None else row[0]


def _select_episode(
    tx: _Transaction, episode_id: str
) -> tuple[episode_store_pb2.EpisodeSummary, list[common_pb2.Label]]:
    row = tx.execute(
        "SELECT sequence, summary FROM episodes WHERE episode_id = ?", (episode_id,)
    ).fetchone()
    if row is None:
        raise EpisodeNotFound(f"no episode {episode_id!r}")
    history = [_label_from(entry) for entry in tx.execute(_SELECT_HISTORY, (episode_id,))]
    return _summary_from(row[0], row[1], history[-1]), history


def _insert(
    tx: _Transaction,
    summary: episode_store_pb2.EpisodeSummary,
    digest: str,
    label: common_pb2.Label,
) -> episode_store_pb2.EpisodeSummary:
    # The blob holds what never changes: the label lives in its own columns and history, the
    # sequence in its column.
    stored = episode_store_pb2.EpisodeSummary()
    stored.CopyFrom(summary)
    stored.ClearField("label")
    stored.ClearField("sequence")
    row = (
        summary.episode_id,
        digest,
        summary.robot_id,
        summary.domain,
        summary.randomization,
        summary.policy,
        summary.model.name,
        summary.model.version,
        summary.object_set,
        summary.collection_id,
        _micros(summary, "started_at"),
        _micros(summary, "ingested_at"),
        summary.num_steps,
        summary.stored_bytes,
        summary.shard,
        label.state,
        label.success,
        stored.SerializeToString(deterministic=True),
    )
    (sequence,) = tx.execute(_INSERT_EPISODE, row).fetchone()
    # An empty model name is random exploration: no model to filter by.
    models = {(m.name, m.version) for m in (summary.model, *summary.step_models) if m.name}
    for name, version in sorted(models):
        tx.execute(
            "INSERT INTO episode_models (episode_id, model_name, model_version) VALUES (?, ?, ?)",
            (summary.episode_id, name, version),
        )
    _insert_label(tx, summary.episode_id, 0, label)
    stored.sequence = sequence
    stored.label.CopyFrom(label)
    return stored


def _insert_label(
    tx: _Transaction, episode_id: str, position: int, label: common_pb2.Label
) -> None:
    tx.execute(
        _INSERT_LABEL,
        (
            episode_id,
            position,
            label.state,
            label.success,
            label.source,
            label.reason,
            _micros(label, "labeled_at"),
        ),
    )


def _where(flt: episode_store_pb2.EpisodeFilter) -> tuple[list[str], list[Any]]:
    """Translates a filter into SQL conditions on `episodes e` and their parameters."""
    clauses: list[str] = []
    params: list[Any] = []

    def match(clause: str, *values: Any) -> None:
        clauses.append(clause)
        params.extend(values)

    if flt.domain:
        match("e.domain = ?", flt.domain)
    if flt.robot_ids:
        match(f"e.robot_id IN ({', '.join('?' * len(flt.robot_ids))})", *flt.robot_ids)
    if flt.model.name:
        models = "SELECT 1 FROM episode_models m WHERE m.episode_id = e.episode_id"
        if flt.model.version:
            match(
                f"EXISTS ({models} AND m.model_name = ? AND m.model_version = ?)",
                flt.model.name,
                flt.model.version,
            )
        else:
            match(f"EXISTS ({models} AND m.model_name = ?)", flt.model.name)
    if flt.label_state:
        match("e.label_state = ?", flt.label_state)
    if flt.HasField("success"):
        match(f"e.label_state IN {_LABELED_STATES} AND e.label_success = ?", flt.success)
    if flt.randomization:
        match("e.randomization = ?", flt.randomization)
    if flt.object_set:
        match("e.object_set = ?", flt.object_set)
    if flt.collection_id:
        match("e.collection_id = ?", flt.collection_id)
    if flt.policy:
        match("e.policy = ?", flt.policy)
    if flt.HasField("since"):
        match("e.started_at_us >= ?", flt.since.ToMicroseconds())
    if flt.HasField("until"):
        match("e.started_at_us < ?", flt.until.ToMicroseconds())
    return clauses, params
