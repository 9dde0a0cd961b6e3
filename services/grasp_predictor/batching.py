"""Server-side dynamic batching: concurrent requests merged into one model call.

Requests wait in a bounded queue. A worker takes the oldest request, then adds
queued requests whose inputs have the same shape (past the batch dimension)
until `max_batch_size` rows are collected or `timeout_s` has passed since it
started the batch, runs the model once and hands each caller its rows. It only
waits while requests arrive faster than the timeout (a moving average of the
gaps between arrivals): a lone caller is not held back for nothing. A full
queue refuses new requests at once (RESOURCE_EXHAUSTED) instead of letting
latency grow without bound.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Gauge, Histogram

from services.common import logs
from services.common.errors import ResourceExhausted

log = logs.get_logger(__name__)

BATCH_ROWS = Histogram(
    "graspfleet_predictor_batch_rows",
    "Rows (image pairs) per model call after batching.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_DEPTH = Gauge("graspfleet_predictor_queue_depth", "Requests waiting for a batch.", ["model"])
MODEL_SECONDS = Histogram(
    "graspfleet_predictor_model_seconds",
    "Time of one model call (a whole batch), seconds.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

Inputs = dict[str, np.ndarray]
RunFn = Callable[[Inputs], dict[str, np.ndarray]]


@dataclass(eq=False)  # identity: removing one from the queue must never compare arrays
class _Pending:
    inputs: Inputs
    rows: int
    key: tuple
    future: Future = field(default_factory=Future)


def _shape_key(inputs: Inputs) -> tuple:
    return tuple(sorted((name, value.shape[1:], value.dtype.str) for name, value in inputs.items()))


def run_timed(run: RunFn, inputs: Inputs, model: str) -> dict[str, np.ndarray]:
    """Runs the model once and records its latency and batch size."""
    rows = next(iter(inputs.values())).shape[0]
    BATCH_ROWS.labels(model).observe(rows)
    start = time.perf_counter()
    outputs = run(inputs)
    MODEL_SECONDS.labels(model).observe(time.perf_counter() - start)
    return outputs


class DynamicBatcher:
    """Batches requests for one loaded model version.

    Args:
        run: Calls the model on a batch (a dict of arrays sharing dimension 0).
        model: Label for metrics ("grasp_success").
        max_batch_size: Most rows in one model call.
        timeout_s: Longest a batch waits to fill once it has its first request.
        max_queue: Most requests waiting; more are refused.
    """

    def __init__(
        self, run: RunFn, model: str, max_batch_size: int, timeout_s: float, max_queue: int
    ) -> None:
        self.run = run
        self.model = model
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.max_queue = max_queue
        self._queue: deque[_Pending] = deque()
        self._mean_gap_s = float("inf")  # moving average of the time between arrivals
        self._last_arrival = time.monotonic()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"batcher-{model}", daemon=True)
        self._thread.start()

    def submit(self, inputs: Inputs) -> Future:
        """Queues one request; its future resolves to the request's own output rows."""
        rows = next(iter(inputs.values())).shape[0]
        pending = _Pending(inputs, rows, _shape_key(inputs))
        with self._cond:
            if self._closed:
                raise ResourceExhausted(f"model {self.model} is being unloaded; retry")
            if len(self._queue) >= self.max_queue:
                raise ResourceExhausted(
                    f"the predictor's queue for {self.model} is full ({self.max_queue} requests); retry with backoff"
                )
            self._queue.append(pending)
            now = time.monotonic()
            gap = now - self._last_arrival
            self._last_arrival = now
            self._mean_gap_s = (
                gap if self._mean_gap_s == float("inf") else 0.8 * self._mean_gap_s + 0.2 * gap
            )
            QUEUE_DEPTH.labels(self.model).set(len(self._queue))
            self._cond.notify()
        return pending.future

    def _take_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            deadline = time.monotonic() + self.timeout_s
            while rows < self.max_batch_size:
                match = next(
                    (
                        p
                        for p in self._queue
                        if p.key == first.key and rows + p.rows <= self.max_batch_size
                    ),
                    None,
                )
                if match is not None:
                    self._queue.remove(match)
                    batch.append(match)
                    rows += match.rows
                    continue
                remaining = deadline - time.monotonic()
                others_coming = self._mean_gap_s < self.timeout_s
                if remaining <= 0 or self._closed or not others_coming:
                    break
                self._cond.wait(remaining)
            QUEUE_DEPTH.labels(self.model).set(len(self._queue))
            return batch

    def _work(self) -> None:
        while True:
            try:
                batch = self._take_batch()
            except Exception:  # noqa: BLE001 - a dead batcher would hang every caller
                log.exception("batcher failed to form a batch", extra={"model": self.model})
                continue
            if batch is None:
                return
            live = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                merged = {
                    name: np.concatenate([p.inputs[name] for p in live]) for name in live[0].inputs
                }
                outputs = run_timed(self.run, merged, self.model)
            except Exception as err:  # noqa: BLE001 - every caller must hear about the failure
                for p in live:
                    p.future.set_exception(err)
            else:
                start = 0
                for p in live:
                    p.future.set_result({k: v[start : start + p.rows] for k, v in outputs.items()})
                    start += p.rows

    def close(self) -> None:
        """Serves what is queued, then stops the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
