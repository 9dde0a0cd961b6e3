"""A write-ahead spool of episodes on local disk, flushed to the store in the background.

Every finished episode is written to the spool first (temp file, fsync,
rename), then an uploader thread streams it to the store and deletes it once the
store has acknowledged it (a duplicate acknowledgement counts: the store already
has it). While the store is unreachable episodes wait on disk, across restarts
of the process. An episode the store refuses for good (bad data, an id clash)
is moved to `rejected/` with the reason beside it: never silently dropped.
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
from services.common import logs
from services.common.files import write_atomically
from services.episode_store import client
from services.episode_store.shards import EpisodeRecord

log = logs.get_logger(__name__)

SUFFIX = ".episode"
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)

SPOOL_DEPTH = Gauge(
    "graspfleet_spool_episodes", "Episodes on local disk waiting for the store.", ["spool"]
)
UPLOADED = Counter("graspfleet_spool_uploaded_total", "Episodes the store acknowledged.", ["spool"])
REJECTED = Counter(
    "graspfleet_spool_rejected_total", "Episodes the store refused for good.", ["spool"]
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
    """

    def __init__(self, root: Path, name: str) -> None:
        self.root = Path(root)
        self.name = name
        self.rejected = self.root / "rejected"
        self.rejected.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob("*.tmp"):  # a put that a crash interrupted
            stale.unlink()
        SPOOL_DEPTH.labels(name).set(self.depth())

    def put(self, record: EpisodeRecord) -> Path:
        """Writes an episode durably; it is safe on disk when this returns."""
        final = self.root / f"{record.header.episode_id}{SUFFIX}"
        write_atomically(final, _encode(record))
        SPOOL_DEPTH.labels(self.name).set(self.depth())
        return final

    def pending(self) -> list[Path]:
        """Spooled episodes, oldest first."""
        return sorted(self.root.glob(f"*{SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name))

    def depth(self) -> int:
        return sum(1 for _ in self.root.glob(f"*{SUFFIX}"))

    def read(self, path: Path) -> EpisodeRecord:
        return _decode(path.read_bytes())

    def acknowledge(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        UPLOADED.labels(self.name).inc()
        SPOOL_DEPTH.labels(self.name).set(self.depth())

    def reject(self, path: Path, reason: str) -> None:
        os.replace(path, self.rejected / path.name)
        (self.rejected / f"{path.name}.reason").write_text(reason + "\n")
        REJECTED.labels(self.name).inc()
        SPOOL_DEPTH.labels(self.name).set(self.depth())
        log.error(
            "episode refused by the store",
            extra={"spool": self.name, "file": path.name, "reason": reason},
        )

    def flush(
        self, write: Callable[[EpisodeRecord], episode_store_pb2.WriteEpisodeResponse]
    ) -> int:
        """Uploads spooled episodes in order until the spool is empty or the store is away.

        Returns:
            How many episodes the store acknowledged.

        Raises:
            grpc.RpcError: a retryable failure (the store is unreachable or busy):
                the episode stays spooled.
        """
        sent = 0
        for path in self.pending():
            try:
                record = self.read(path)
            except Exception as err:  # noqa: BLE001 - a corrupt file must not block the rest
                self.reject(path, f"unreadable spool file: {err}")
                continue
            try:
                write(record)
            except grpc.RpcError as err:
                if err.code() in RETRYABLE:
                    raise
                self.reject(path, f"{err.code().name}: {err.details()}")
                continue
            self.acknowledge(path)
            sent += 1
        return sent


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
                self._stop.wait(delay)
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
