"""The local backend: shards as `spawn` worker processes of the farm, `workers` at a time."""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections import deque
from dataclasses import dataclass

from services.common import logs
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.events import ENDINGS, Event, ShardFailed, ShardStarted, ShardStopped
from services.sim_farm.plan import CollectionPlan, ShardJob, shard_settings
from services.sim_farm.worker import run_shard

# Seconds a closing farm gives each worker to finish its episode before terminating it.
JOIN_S = 30


def work(job: ShardJob, progress, stop) -> None:
    """A worker process: one shard, logging as the farm's workers do."""
    logs.configure_logging("sim-farm-worker", "INFO", "json")
    run_shard(job, progress, stop)


@dataclass(frozen=True)
class _Running:
    job: ShardJob
    process: multiprocessing.Process


class LocalBackend:
    """Shards run as worker processes on this machine, in the order collections started.

    Each worker reports through one shared queue; a worker that dies without
    saying how it ended (killed, out of memory) fails its shard.

    Args:
        config: `workers` (processes at once) and the settings shards run under.
    """

    name = "local"

    def __init__(self, config: SimFarmConfig) -> None:
        self.config = config
        self.context = multiprocessing.get_context("spawn")
        self.progress = self.context.Queue()
        self.lock = threading.Lock()
        self.pending: deque[ShardJob] = deque()
        self.running: dict[tuple[str, int], _Running] = {}
        self.stops: dict[str, object] = {}  # collection id -> a multiprocessing Event
        self._own: list[Event] = []  # events the backend itself makes, not a worker

    def start(self, plan: CollectionPlan) -> None:
        """Queues every shard of `plan`; they start as worker processes free up."""
        settings = shard_settings(self.config)
        with self.lock:
            self.stops[plan.collection_id] = self.context.Event()
            self.pending.extend(ShardJob(plan, shard, settings) for shard in range(plan.num_shards))

    def stop(self, collection_id: str) -> None:
        """Signals the collection's running shards to stop and drops its queued ones."""
        with self.lock:
            stop = self.stops.get(collection_id)
            if stop is not None:
                stop.set()
            waiting = [j for j in self.pending if j.plan.collection_id == collection_id]
            for job in waiting:
                self.pending.remove(job)
                self._own.append(ShardStopped(collection_id, job.shard))

    def poll(self, timeout_s: float) -> list[Event]:
        """Starts queued shards there is room for; returns the workers' and the backend's events."""
        with self.lock:
            self._launch()
            events, self._own = self._own, []
        try:
            events.append(self.progress.get(timeout=0 if events else timeout_s))
            while True:
                events.append(self.progress.get_nowait())
        except queue.Empty:
            pass
        with self.lock:
            for event in events:
                if isinstance(event, ENDINGS):
                    self.running.pop((event.collection_id, event.shard), None)
            events += self._reap()
        return events

    def _launch(self) -> None:
        while self.pending and len(self.running) < self.config.workers:
            job = self.pending.popleft()
            process = self.context.Process(
                target=work,
                args=(job, self.progress, self.stops[job.plan.collection_id]),
                daemon=True,
            )
            process.start()
            self.running[(job.plan.collection_id, job.shard)] = _Running(job, process)
            self._own.append(ShardStarted(job.plan.collection_id, job.shard, f"pid {process.pid}"))

    def _reap(self) -> list[Event]:
        """Shards whose worker died without reporting how it ended: failed, not running forever."""
        died = []
        for key, entry in list(self.running.items()):
            code = entry.process.exitcode
            if code not in (0, None):
                del self.running[key]
                died.append(ShardFailed(*key, f"worker exited with code {code}"))
        return died

    def close(self) -> None:
        """Stops every shard; episodes already collected stay spooled or stored."""
        with self.lock:
            for stop in self.stops.values():
                stop.set()
            self.pending.clear()
            running = list(self.running.values())
        for entry in running:
            entry.process.join(timeout=JOIN_S)
            if entry.process.is_alive():
                entry.process.terminate()
