"""The supervisor: starts queued runs, follows running jobs, records how they end.

One background thread. Each pass it reads every active run's progress and
result files, asks the backend whether the job still runs, and starts queued
runs while fewer than `max_concurrent_runs` are active. At start it re-adopts
the runs a previous trainer left RUNNING or VALIDATING: a job that still runs
is followed again; one that ended while the trainer was away is finalized from
its result file; one that is gone without a result is marked FAILED with the
reason (not re-queued: its spec is kept, and resubmitting is one call).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from graspfleet.v1 import common_pb2, trainer_pb2
from models.registry import CANARY, Registry
from services.common import clock, logs
from services.trainer import evaluation, metrics
from services.trainer.backends import RUNNING, JobBackend, JobSpec
from services.trainer.client import ACTIVE, TERMINAL
from services.trainer.config import TrainerConfig
from services.trainer.job import files
from services.trainer.runs import RunStore, state_name

log = logs.get_logger(__name__)

Run = trainer_pb2.Run
_RESULT_STATES = {
    "SUCCEEDED": trainer_pb2.RUN_STATE_SUCCEEDED,
    "REJECTED": trainer_pb2.RUN_STATE_REJECTED,
    "FAILED": trainer_pb2.RUN_STATE_FAILED,
    "CANCELLED": trainer_pb2.RUN_STATE_CANCELLED,
}


def job_name(run_id: str) -> str:
    """The backend job name of a run (a valid Kubernetes Job name)."""
    return f"graspfleet-train-{run_id}"


def job_spec(config: TrainerConfig, run: Run) -> JobSpec:
    """The job that runs `run` on a backend.

    A training job talks to nobody. An evaluation's job plays its episodes on the
    sim-farm and reads their outcomes from the store, whose addresses its
    environment carries; it is labelled `app.kubernetes.io/component: evaluation`
    (the network policies let those pods, and only those, reach the two) and gets
    a small pod without a GPU, since it only follows the farm's collections.
    """
    run_dir = config.runs_path / run.run_id
    common = {
        "name": job_name(run.run_id),
        "args": ("train", "job", "--run-dir", str(run_dir.resolve())),
        "log_path": run_dir / files.LOG_FILE,
    }
    if evaluation.is_evaluation(run.spec):
        return JobSpec(
            **common,
            labels={
                "graspfleet.io/run-id": run.run_id,
                "app.kubernetes.io/component": "evaluation",
            },
            env=evaluation.job_env(config),
            cpu=evaluation.JOB_CPU,
            memory=evaluation.JOB_MEMORY,
            gpus=0,
        )
    return JobSpec(
        **common,
        labels={"graspfleet.io/run-id": run.run_id, "app.kubernetes.io/component": "train"},
    )


class Supervisor:
    """Drives runs from QUEUED to a final state.

    Args:
        config: Concurrency, poll interval, paths.
        runs: The run database.
        registry: Where a passing run's version gets its canary label.
        backends: The configured backends by name.
    """

    def __init__(
        self,
        config: TrainerConfig,
        runs: RunStore,
        registry: Registry,
        backends: Mapping[str, JobBackend],
    ) -> None:
        self.config = config
        self.runs = runs
        self.registry = registry
        self.backends = dict(backends)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trainer-supervisor", daemon=True)

    def run_dir(self, run_id: str) -> Path:
        """The run's folder under the runs path."""
        return self.config.runs_path / run_id

    def start(self) -> None:
        """Re-adopts the runs a previous trainer left active, then follows runs in the background."""
        for run in self.runs.with_states(*ACTIVE):
            backend = self.backends.get(run.spec.backend)
            try:
                if backend is not None and backend.poll(run.job).state == RUNNING:
                    self.runs.update(
                        run.run_id, lambda r: f"re-adopted job {r.job} after a trainer restart"
                    )
                    log.info("run re-adopted", extra={"run_id": run.run_id, "job": run.job})
                self._follow(run)
            except Exception:  # noqa: BLE001 - the background passes retry it
                log.exception("re-adopting a run failed", extra={"run_id": run.run_id})
        self._thread.start()

    def stop(self) -> None:
        """Stops following runs; their jobs keep running and are re-adopted by the next trainer."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def wake(self) -> None:
        """Runs a pass now (after a submit or a cancel) rather than at the next interval."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.pass_once()
            except Exception:  # noqa: BLE001 - the supervisor must outlive one bad pass
                log.exception("supervisor pass failed")
            self._wake.wait(self.config.poll_interval_s)
            self._wake.clear()

    def pass_once(self) -> None:
        """One round: follow active runs, start queued ones, update the gauges."""
        for run in self.runs.with_states(*ACTIVE):
            try:
                self._follow(run)
            except Exception:  # noqa: BLE001 - one unreachable job must not stall the others
                log.exception("following a run failed", extra={"run_id": run.run_id})
        active = len(self.runs.with_states(*ACTIVE))
        for run in self.runs.with_states(trainer_pb2.RUN_STATE_QUEUED):
            if active >= self.config.max_concurrent_runs or self._stop.is_set():
                break
            self._start(run)
            active += 1
        for backend in self.backends.values():
            backend.reap()
        counts = self.runs.count_by_state()
        for state in trainer_pb2.RunState.values():
            if state:
                metrics.RUNS.labels(state_name(state)).set(counts.get(state, 0))

    def _start(self, run: Run) -> None:
        backend = self.backends.get(run.spec.backend)
        if backend is None:
            self._fail(run.run_id, f"backend {run.spec.backend!r} is not configured any more")
            return
        run_dir = self.run_dir(run.run_id)
        try:
            if not evaluation.is_evaluation(run.spec):
                self.registry.freeze(run.spec.model_name)
            job = job_spec(self.config, run)
            handle = self._started_before(run, backend) or backend.start(job)
            (run_dir / files.HANDLE_FILE).write_text(handle)
        except Exception as err:  # noqa: BLE001 - any start failure ends this run, not the trainer
            log.exception("job start failed", extra={"run_id": run.run_id})
            self._fail(run.run_id, f"the job could not be started: {type(err).__name__}: {err}")
            return

        def started(r: Run) -> str | None:
            if r.state != trainer_pb2.RUN_STATE_QUEUED:
                return None
            r.state, r.job = trainer_pb2.RUN_STATE_RUNNING, handle
            r.started_at.CopyFrom(clock.now())
            return f"RUNNING: job {handle} on {backend.name}"

        if self.runs.update(run.run_id, started).job != handle:
            backend.cancel(handle)  # cancelled while it was being started

    def _started_before(self, run: Run, backend: JobBackend) -> str | None:
        """The job of a run whose start was interrupted after the job began.

        That is a trainer crash between starting the job and recording it; starting a
        second one would train twice.
        """
        path = self.run_dir(run.run_id) / files.HANDLE_FILE
        if not path.is_file():
            return None
        handle = path.read_text().strip()
        if backend.poll(handle).state != RUNNING:
            return None
        log.warning("adopting a job started before a crash", extra={"job": handle})
        return handle

    def _follow(self, run: Run) -> None:
        backend = self.backends.get(run.spec.backend)
        if backend is None:
            self._fail(run.run_id, f"lost: backend {run.spec.backend!r} is not configured")
            return
        run_dir = self.run_dir(run.run_id)
        status = backend.poll(run.job)
        progress = files.read_progress(run_dir)
        if progress is not None:
            self._progress(run.run_id, progress)
        # Read after polling: a job that ended between the two has written its result by then.
        result = files.read_result(run_dir)
        if result is not None:
            self._finish(run.run_id, result)
        elif status.state != RUNNING:
            self._fail(
                run.run_id,
                f"lost: job {run.job} ended without a result ({status.detail}); "
                f"see {run_dir / files.LOG_FILE}",
            )

    def _progress(self, run_id: str, progress: files.Progress) -> None:
        def apply(r: Run) -> str | None:
            state = (
                trainer_pb2.RUN_STATE_VALIDATING
                if progress.phase == files.VALIDATING
                else trainer_pb2.RUN_STATE_RUNNING
            )
            if r.state not in ACTIVE:
                return None
            if (r.state, r.step, dict(r.metrics)) == (state, progress.step, progress.metrics):
                return None
            r.state, r.step, r.total_steps = state, progress.step, progress.total
            r.metrics.clear()
            r.metrics.update(progress.metrics)
            loss = progress.metrics.get("loss")
            unit = "episodes" if evaluation.is_evaluation(r.spec) else "step"
            line = f"{unit} {progress.step}/{progress.total}"
            line += f" loss {loss:.4f}" if loss is not None else ""
            return f"{line}: {progress.message}" if progress.message else line

        self.runs.update(run_id, apply)

    def _finish(self, run_id: str, result: files.Result) -> None:
        state = _RESULT_STATES.get(result.state, trainer_pb2.RUN_STATE_FAILED)

        def apply(r: Run) -> str | None:
            if r.state in TERMINAL:
                return None
            r.state = state
            r.metrics.update(result.metrics)
            r.message = result.message
            r.finished_at.CopyFrom(clock.now())
            if state == trainer_pb2.RUN_STATE_SUCCEEDED and not evaluation.is_evaluation(r.spec):
                # Labelled while the run row is locked, so a concurrent cancel cannot slip in
                # between the label and the state.
                name = r.spec.model_name
                self.registry.set_label(
                    name, result.version, CANARY, by=f"run:{r.run_id}", reason=result.message
                )
                r.published.CopyFrom(
                    common_pb2.ModelRef(name=name, version=result.version, label=CANARY)
                )
                metrics.PUBLISHED.labels(name).inc()
            elif state == trainer_pb2.RUN_STATE_REJECTED:
                metrics.GATE_REJECTIONS.labels(r.spec.model_name).inc()
            self._observe(r)
            return f"{state_name(state)}: {result.message}"

        self.runs.update(run_id, apply)

    def _fail(self, run_id: str, message: str) -> None:
        def apply(r: Run) -> str | None:
            if r.state in TERMINAL:
                return None
            r.state, r.message = trainer_pb2.RUN_STATE_FAILED, message
            r.finished_at.CopyFrom(clock.now())
            self._observe(r)
            return f"FAILED: {message}"

        self.runs.update(run_id, apply)
        log.warning("run failed", extra={"run_id": run_id, "reason": message})

    def cancel(self, run_id: str) -> Run:
        """Cancels a queued or running run; stops its job. Ended runs are left as they are."""

        def apply(r: Run) -> str | None:
            if r.state in TERMINAL:
                return None
            r.state, r.message = trainer_pb2.RUN_STATE_CANCELLED, "cancelled on request"
            r.finished_at.CopyFrom(clock.now())
            self._observe(r)
            return "CANCELLED"

        run = self.runs.update(run_id, apply)
        if run.state != trainer_pb2.RUN_STATE_CANCELLED:
            return run
        # Marked before the job is signalled: a job that outlives the signal, or one
        # `_start` launches just now, sees the marker before it publishes.
        files.mark_cancelled(self.run_dir(run_id))
        backend = self.backends.get(run.spec.backend)
        if run.job and backend is not None:
            backend.cancel(run.job)
        self.wake()
        return run

    @staticmethod
    def _observe(run: Run) -> None:
        recipe = trainer_pb2.Recipe.Name(run.spec.recipe).removeprefix("RECIPE_")
        metrics.RUNS_ENDED.labels(recipe, state_name(run.state)).inc()
        if run.HasField("started_at"):
            seconds = run.finished_at.ToNanoseconds() - run.started_at.ToNanoseconds()
            metrics.RUN_SECONDS.labels(recipe, state_name(run.state)).observe(seconds / 1e9)
