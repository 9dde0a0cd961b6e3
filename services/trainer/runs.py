"""The persisted run state: one SQLite file (WAL), written by the trainer alone.

Each run is stored as its `Run` message plus the columns queries need. Every
change goes through `update`, which bumps the run's revision and appends an
event (the new `Run` and a log line): WatchRun replays those events, so a
watcher sees each change even when several land between two of its polls.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from graspfleet.v1 import trainer_pb2
from services.common.errors import AlreadyExists, InvalidArgument, NotFound

RunState = trainer_pb2.RunState
# Returns the log line describing the change, or None to leave the run untouched.
Mutation = Callable[[trainer_pb2.Run], str | None]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT UNIQUE NOT NULL,
        state INTEGER NOT NULL,
        spec_hash TEXT NOT NULL,
        revision INTEGER NOT NULL,
        run BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS runs_state ON runs (state, seq)",
    """CREATE TABLE IF NOT EXISTS run_events (
        run_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        time_us INTEGER NOT NULL,
        log_line TEXT NOT NULL,
        run BLOB NOT NULL,
        PRIMARY KEY (run_id, revision))""",
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


@dataclass(frozen=True)
class Event:
    """One recorded change of a run."""

    revision: int
    time_us: int
    log_line: str
    run: trainer_pb2.Run


def state_name(state: int) -> str:
    """RUN_STATE_RUNNING -> "RUNNING"."""
    return trainer_pb2.RunState.Name(state).removeprefix("RUN_STATE_")


def spec_hash(spec: trainer_pb2.RunSpec) -> str:
    """Identity of a submitted spec, to tell a retry from a different run under the same id."""
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()


def _page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"before:{seq}".encode()).decode()


def _decode_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        kind, _, seq = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "before" and seq.isdigit():
            return int(seq)
    except ValueError:
        pass
    raise InvalidArgument(f"page_token {token!r} is not one this trainer issued")


class RunStore:
    """Runs in SQLite. Thread-safe; the trainer process is its only writer.

    Args:
        path: The database file; its folder is created.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)

    def close(self) -> None:
        """Closes the database."""
        with self._lock:
            self._db.close()

    def create(self, run: trainer_pb2.Run, submitted_hash: str, log_line: str) -> tuple:
        """Stores a new run; returns (run, True), or (stored run, False) for a retry.

        Raises:
            AlreadyExists: a different spec was submitted under the same run id.
        """
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT spec_hash, run FROM runs WHERE run_id = ?", (run.run_id,)
            ).fetchone()
            if row is not None:
                if row[0] != submitted_hash:
                    raise AlreadyExists(
                        f"run {run.run_id} exists with a different spec; choose another run_id"
                    )
                return trainer_pb2.Run.FromString(row[1]), False
            blob = run.SerializeToString()
            self._db.execute(
                "INSERT INTO runs (run_id, state, spec_hash, revision, run) VALUES (?, ?, ?, 1, ?)",
                (run.run_id, run.state, submitted_hash, blob),
            )
            self._event(run.run_id, 1, log_line, blob)
        return run, True

    def get(self, run_id: str) -> trainer_pb2.Run:
        """The run, or NotFound."""
        with self._lock:
            row = self._db.execute("SELECT run FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return trainer_pb2.Run.FromString(row[0])

    def update(self, run_id: str, mutate: Mutation) -> trainer_pb2.Run:
        """Applies `mutate` to the stored run atomically and records the change as an event."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT revision, run FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            run = trainer_pb2.Run.FromString(row[1])
            log_line = mutate(run)
            if log_line is None:
                return run
            revision, blob = row[0] + 1, run.SerializeToString()
            self._db.execute(
                "UPDATE runs SET state = ?, revision = ?, run = ? WHERE run_id = ?",
                (run.state, revision, blob, run_id),
            )
            self._event(run_id, revision, log_line, blob)
        return run

    def _event(self, run_id: str, revision: int, log_line: str, blob: bytes) -> None:
        self._db.execute(
            "INSERT INTO run_events (run_id, revision, time_us, log_line, run) VALUES (?, ?, ?, ?, ?)",
            (run_id, revision, time.time_ns() // 1000, log_line, blob),
        )

    def events_after(self, run_id: str, revision: int) -> list[Event]:
        """The run's events newer than `revision`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT revision, time_us, log_line, run FROM run_events "
                "WHERE run_id = ? AND revision > ? ORDER BY revision",
                (run_id, revision),
            ).fetchall()
        return [Event(r[0], r[1], r[2], trainer_pb2.Run.FromString(r[3])) for r in rows]

    def latest_event(self, run_id: str) -> Event:
        """The run's newest event (its current state), or NotFound."""
        with self._lock:
            row = self._db.execute(
                "SELECT revision, time_us, log_line, run FROM run_events WHERE run_id = ? "
                "ORDER BY revision DESC LIMIT 1",
                (run_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return Event(row[0], row[1], row[2], trainer_pb2.Run.FromString(row[3]))

    def list(self, state: int, page_size: int, page_token: str) -> tuple[list, str]:
        """A page of runs, newest first, optionally of one state; returns (runs, next token)."""
        before = _decode_page_token(page_token)
        clauses, params = [], []
        if state:
            clauses.append("state = ?")
            params.append(state)
        if before is not None:
            clauses.append("seq < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, run FROM runs {where} ORDER BY seq DESC LIMIT ?",
                (*params, page_size + 1),
            ).fetchall()
        runs = [trainer_pb2.Run.FromString(r[1]) for r in rows[:page_size]]
        token = _page_token(rows[page_size - 1][0]) if len(rows) > page_size else ""
        return runs, token

    def with_states(self, *states: int) -> list[trainer_pb2.Run]:
        """Every run in one of `states`, oldest first."""
        marks = ", ".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                f"SELECT run FROM runs WHERE state IN ({marks}) ORDER BY seq", states
            ).fetchall()
        return [trainer_pb2.Run.FromString(r[0]) for r in rows]

    def count_by_state(self) -> dict[int, int]:
        """How many runs are in each state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM runs GROUP BY state").fetchall()
        return dict(rows)

    def setting(self, key: str) -> str | None:
        """A value the trainer keeps across restarts (e.g. the auto-retrain watermark)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_setting(self, key: str, value: str) -> None:
        """Keeps `value` under `key` across restarts, replacing any earlier value."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
