"""A write-ahead spool of episodes on local disk, flushed to the store in the background.

Every finished episode is written to the spool first (temp file, fsync,
rename), then an uploader thread streams it to the store and deletes it once the
store has acknowledged it (a duplicate acknowledgement counts: the store already
has it). While the store is unreachable episodes wait on disk, across restarts
of the process. An episode the store refuses for good (bad data, an id clash),
or keeps failing on while it stores the others, is moved to `rejected/` with
the reason beside it: never silently dropped, and never in the way of the
episodes behind it. A spool with a size cap reports itself full, so that its
producer pauses instead of filling the disk.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from prometheus_client import Counter, Gauge

from graspfleet.v1 import episode_store_pb2
from models.episodes.shards import EpisodeRecord
from services.common import logs
from services.common.files import write_atomically
from services.episode_store import client

log = logs.get_logger(__name__)

SUFFIX = ".episode"
# The store cannot take any episode now (unreachable, too slow, shutting down): the spool
# waits and tries again, oldest first.
STORE_AWAY = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
# The store's answers to a bad episode: retrying the same bytes can only get the same answer.
REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# A refusal with a retry hint (client.retry_after_s: RESOURCE_EXHAUSTED while the store
# receives all the episodes it can) is about the store's load: it counts as the store away.
# Any other failure (INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED for a limit, ABORTED when the store
# ended a stream that went idle, ...) may be the episode's fault or the store's: the episode
# stays and is sent again. It counts against the episode only when the store stored other
# episodes in the same pass; after this many such strikes the episode is moved aside.
MAX_STRIKES = 5

SPOOL_DEPTH = Gauge(
    "graspfleet_spool_episodes", "Episodes on local disk waiting for the store.", ["spool"]
)
SPOOL_BYTES = Gauge(
    "graspfleet_spool_bytes",
    "Bytes of the spool on local disk: episodes waiting and episodes in rejected/.",
    ["spool"],
)
UPLOADED = Counter("graspfleet_spool_uploaded_total", "Episodes the store acknowledged.", ["spool"])
REJECTED = Counter(
    "graspfleet_spool_rejected_total",
    "Episodes moved to rejected/: refused by the store, failing there, or unreadable.",
    ["spool"],
)
REJECTED_DEPTH = Gauge(
    "graspfleet_spool_rejected_episodes",
    "Episodes in the spool's rejected/ folder, waiting for a person.",
    ["spool"],
)


def _encode(record: EpisodeRecord) -> bytes:
    parts = []
    for request in client.episode_requests(record):
        data = request.SerializeToString()
        parts.append(len(data).to_bytes(8, "little") + data)
    return b"".join(parts)


def _decode(data: bytes) -> EpisodeRecord:
    requests, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 8], "little")
        requests.append(
            episode_store_pb2.WriteEpisodeRequest.FromString(data[offset + 8 : offset + 8 + size])
        )
        offset += 8 + size
    return EpisodeRecord(
        header=requests[0].header,
        steps=tuple(r.step for r in requests[1:-1]),
        outcome=requests[-1].outcome,
    )


class EpisodeSpool:
    """The spool folder: durable put, ordered listing, acknowledged removal.

    Args:
        root: Folder of the spool (created if missing).
        name: Label for metrics and logs, e.g. the robot id.
        max_bytes: Size at which `full()` turns true (episodes and rejected/ together); 0
            for no cap. `put` never refuses an episode: the producer asks `full()` first.
        max_strikes: Failures of one episode, each while the store stored others, after
            which it is moved to rejected/.
    """

    def __init__(
        self, root: Path, name: str, *, max_bytes: int = 0, max_strikes: int = MAX_STRIKES
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.max_bytes = max_bytes
        self.max_strikes = max_strikes
        self.rejected = self.root / "rejected"
        self.rejected.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob("*.tmp"):  # a put that a crash interrupted
            stale.unlink()
        # Episode file name -> strikes, for every episode the store failed on in this process.
        self._failed: dict[str, int] = {}
        # A running total: the producer asks `full()` before every episode, and summing a
        # large spool's files each time would cost more than the episode.
        self._lock = threading.Lock()
        self._bytes = sum(
            _size(p) for p in (*self.root.glob(f"*{SUFFIX}"), *self.rejected.iterdir())
        )
        SPOOL_BYTES.labels(name).set(self._bytes)
        REJECTED_DEPTH.labels(name).set(sum(1 for _ in self.rejected.glob(f"*{SUFFIX}")))
        SPOOL_DEPTH.labels(name).set(self.depth())

    def put(self, record: EpisodeRecord) -> Path:
        """Writes an episode durably; it is safe on disk when this returns."""
        final = self.root / f"{record.header.episode_id}{SUFFIX}"
        data = _encode(record)
        replaced = _size(final)  # a second put of one id replaces the file
        write_atomically(final, data)
        self._add_bytes(len(data) - replaced)
        SPOOL_DEPTH.labels(self.name).set(self.depth())
        return final

    def pending(self) -> list[Path]:
        """Spooled episodes, oldest first."""
        return sorted(self.root.glob(f"*{SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name))

    def depth(self) -> int:
        """How many episodes wait to be uploaded."""
        return sum(1 for _ in self.root.glob(f"*{SUFFIX}"))

    def size_bytes(self) -> int:
        """Bytes the spool holds on disk: waiting episodes and rejected ones."""
        with self._lock:
            return self._bytes

    def full(self) -> bool:
        """True when the spool has reached `max_bytes`: the producer should wait."""
        return bool(self.max_bytes) and self.size_bytes() >= self.max_bytes

    def _add_bytes(self, delta: int) -> None:
        with self._lock:
            self._bytes += delta
            SPOOL_BYTES.labels(self.name).set(self._bytes)

    def read(self, path: Path) -> EpisodeRecord:
        """The spooled episode at `path`."""
        return _decode(path.read_bytes())

    def acknowledge(self, path: Path) -> None:
        """Deletes an uploaded episode from the spool."""
        size = _size(path)
        path.unlink(missing_ok=True)
        self._add_bytes(-size)
        self._failed.pop(path.name, None)
        UPLOADED.labels(self.name).inc()
        SPOOL_DEPTH.labels(self.name).set(self.depth())

    def reject(self, path: Path, reason: str) -> None:
        """Moves an episode to rejected/ with `reason` beside it; it is not uploaded again."""
        note = self.rejected / f"{path.name}.reason"
        replaced = _size(self.rejected / path.name) + _size(note)
        write_atomically(note, reason + "\n")
        os.replace(path, self.rejected / path.name)
        # The episode stays on the same disk; only an older copy it replaced is gone.
        self._add_bytes(_size(note) - replaced)
        self._failed.pop(path.name, None)
        REJECTED.labels(self.name).inc()
        REJECTED_DEPTH.labels(self.name).set(sum(1 for _ in self.rejected.glob(f"*{SUFFIX}")))
        SPOOL_DEPTH.labels(self.name).set(self.depth())
        log.error(
            "episode moved to rejected/",
            extra={"spool": self.name, "file": path.name, "reason": reason},
        )

    def flush(
        self, write: Callable[[EpisodeRecord], episode_store_pb2.WriteEpisodeResponse]
    ) -> int:
        """Uploads spooled episodes until each has been tried once or the store is away.

        Episodes go oldest first, except that those the store failed on before go last,
        so that the others show whether the store works at all.

        Returns:
            How many episodes the store acknowledged.

        Raises:
            grpc.RpcError: The store is away or busy, or failed on every episode it was sent: what
                is left stays spooled, and no episode is blamed.
        """
        sent = 0
        failed: list[tuple[Path, grpc.RpcError]] = []
        try:
            for path in sorted(self.pending(), key=lambda p: p.name in self._failed):
                try:
                    record = self.read(path)
                except Exception as err:  # noqa: BLE001 - a corrupt file must not block the rest
                    self.reject(path, f"unreadable spool file: {err}")
                    continue
                try:
                    write(record)
                except grpc.RpcError as err:
                    if err.code() in STORE_AWAY or client.retry_after_s(err) is not None:
                        raise
                    if err.code() in REFUSED:
                        self.reject(path, f"{err.code().name}: {err.details()}")
                        continue
                    failed.append((path, err))
                    self._failed.setdefault(path.name, 0)
                    # Two failures in a row before any success: the store is in trouble;
                    # trying every other episode now would only take long.
                    if not sent and len(failed) >= 2:
                        break
                    continue
                self.acknowledge(path)
                sent += 1
        finally:
            self._blame(failed, sent)
        if failed and not sent:
            raise failed[-1][1]
        return sent

    def _blame(self, failed: list[tuple[Path, grpc.RpcError]], sent: int) -> None:
        """Gives each failed episode a strike when the store stored others in the same pass."""
        if not sent:
            return
        for path, err in failed:
            strikes = self._failed.get(path.name, 0) + 1
            self._failed[path.name] = strikes
            if strikes >= self.max_strikes:
                self.reject(
                    path,
                    f"{err.code().name}: {err.details()} (the store failed on this episode "
                    f"{strikes} times while it stored others)",
                )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # acknowledged meanwhile by the uploader thread
        return 0


class Uploader:
    """Flushes a spool to the store on a background thread, backing off while it is away.

    Args:
        spool: The spool to drain.
        address: Returns the store's current host:port (it may move).
        timeout_s: Deadline of one WriteEpisode.
        retry_s: (first, longest) wait between attempts while the store is away.
    """

    def __init__(
        self,
        spool: EpisodeSpool,
        address: Callable[[], str],
        timeout_s: float = 30.0,
        retry_s: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self.spool = spool
        self.address = address
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"uploader-{spool.name}", daemon=True
        )
        self.last_error = ""

    def start(self) -> Uploader:
        """Starts the upload thread; returns the uploader."""
        self._thread.start()
        return self

    def submit(self, record: EpisodeRecord) -> None:
        """Spools an episode (durably, before returning) and wakes the uploader."""
        self.spool.put(record)
        self._idle.clear()
        self._wake.set()

    def _run(self) -> None:
        delay = self.retry_s[0]
        while not self._stop.is_set():
            address = self.address()
            channel, stub = client.connect(address)
            try:
                with channel:
                    self.spool.flush(
                        functools.partial(client.write_episode, stub, timeout_s=self.timeout_s)
                    )
                delay = self.retry_s[0]
                self.last_error = ""
                if self.spool.depth() == 0:
                    self._idle.set()
                self._wake.wait(1.0)
                self._wake.clear()
            except grpc.RpcError as err:
                self.last_error = f"{err.code().name}: {err.details()}"
                self._stop.wait(max(delay, client.retry_after_s(err) or 0.0))
                delay = min(delay * 2, self.retry_s[1])

    def wait_idle(self, timeout_s: float) -> bool:
        """Blocks until the spool is empty (True) or the time is up (False)."""
        return self._idle.wait(timeout_s) and self.spool.depth() == 0

    def stop(self, drain_s: float = 0.0) -> None:
        """Stops uploading, first giving the spool up to `drain_s` to empty; what is left stays on disk."""
        if drain_s:
            self.wait_idle(drain_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(self.timeout_s, 1.0) + 5)
