"""The Trainer, independent of gRPC: submit, inspect, watch and cancel runs; move model labels."""

from __future__ import annotations

import contextlib
import datetime
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from graspfleet.v1 import episode_store_pb2_grpc, trainer_pb2
from models.registry import Registry
from services.common import logs
from services.common.errors import InvalidArgument, NotFound
from services.trainer import evaluation, spec, versions
from services.trainer.backends import JobBackend
from services.trainer.client import TERMINAL
from services.trainer.config import TrainerConfig
from services.trainer.job import files
from services.trainer.job.inputs import JobInputs, SceneGate
from services.trainer.runs import RunStore, spec_hash
from services.trainer.selection import Selection, select
from services.trainer.supervisor import Supervisor

log = logs.get_logger(__name__)

DEFAULT_PAGE = 50
MAX_PAGE = 500


def _event(e) -> trainer_pb2.RunEvent:
    event = trainer_pb2.RunEvent(run=e.run, log_line=e.log_line)
    event.time.FromMicroseconds(e.time_us)
    return event


class Trainer:
    """Runs and the model registry behind the Trainer service.

    Args:
        config: The trainer's settings.
        runs: The run database.
        registry: Versions and labels.
        backends: Configured job backends by name.
        store: Stub of the episode store, for data selection.
    """

    def __init__(
        self,
        config: TrainerConfig,
        runs: RunStore,
        registry: Registry,
        backends: Mapping[str, JobBackend],
        store: episode_store_pb2_grpc.EpisodeStoreStub,
    ) -> None:
        self.config = config
        self.runs = runs
        self.registry = registry
        self.backends = dict(backends)
        self.store = store
        self.supervisor = Supervisor(config, runs, registry, backends)
        self.stopping = threading.Event()
        self._submit_lock = threading.Lock()

    def submit(
        self, run_spec: trainer_pb2.RunSpec, run_id: str = "", submitted_by: str = ""
    ) -> trainer_pb2.Run:
        """Validates a spec, resolves its data and queues the run; a retry returns the same run.

        Raises:
            InvalidArgument: a bad spec or a selection that matches no usable data.
            FailedPrecondition: a recipe that needs a generator with no stable version,
                an evaluation on a trainer without a sim-farm, or an unconfigured backend.
            NotFound: a version or label the spec names does not exist.
            AlreadyExists: `run_id` names a run with another spec.
        """
        if run_id:
            spec.check_run_id(run_id)
        submitted = spec_hash(run_spec)
        # One submission at a time: a retry racing its original must find it, not redo it.
        with self._submit_lock:
            if run_id:
                try:
                    existing = self.runs.get(run_id)
                except NotFound:
                    existing = None
                if existing is not None:
                    # The same spec returns the stored run; another spec is ALREADY_EXISTS.
                    return self.runs.create(existing, submitted, "")[0]
            run_id = run_id or f"run-{uuid.uuid4().hex[:12]}"
            if evaluation.is_evaluation(run_spec):
                run = self._queue_evaluation(run_spec, run_id, submitted_by, submitted)
                self.supervisor.wake()
                return run
            normalized, recipe = spec.normalize(
                run_spec, self.config, tuple(self.backends), self.registry
            )
            generator = versions.applied_generator(normalized, recipe)
            selection = select(self.store, normalized, recipe)
            real = selection.description.get("real", {"train": 0, "validation": 0})
            held_out = (
                f"{len(selection.validation)} held-out episodes to check the scene on"
                if recipe.is_generator
                else f"{real['validation']} held-out real episodes for validation"
            )
            using = f", applying {generator['name']}:{generator['version']}" if generator else ""
            run = trainer_pb2.Run(
                run_id=run_id,
                spec=normalized,
                state=trainer_pb2.RUN_STATE_QUEUED,
                total_steps=normalized.params.steps,
                submitted_by=submitted_by,
                message=(
                    f"queued: {len(selection.train)} training episodes ({real['train']} real)"
                    f"{using}, {held_out}"
                ),
            )
            run.created_at.GetCurrentTime()
            scene_gate = None
            if recipe.is_generator:
                scene_gate = SceneGate(
                    min_mask_accuracy=self.config.generator_min_mask_accuracy,
                    min_mask_iou=self.config.generator_min_mask_iou,
                )
            self._write_job_inputs(run, selection, scene_gate)
            run, _ = self.runs.create(run, submitted, f"QUEUED by {submitted_by}: {run.message}")
        log.info(
            "run submitted",
            extra={"run_id": run_id, "recipe": recipe.name, "by": submitted_by},
        )
        self.supervisor.wake()
        return run

    def _queue_evaluation(
        self, run_spec: trainer_pb2.RunSpec, run_id: str, submitted_by: str, submitted: str
    ) -> trainer_pb2.Run:
        """Checks an evaluation, resolves its versions, writes its job file and queues it."""
        normalized = evaluation.normalize(
            run_spec, run_id, self.config, tuple(self.backends), self.registry
        )
        request = normalized.evaluation
        run = trainer_pb2.Run(
            run_id=run_id,
            spec=normalized,
            state=trainer_pb2.RUN_STATE_QUEUED,
            total_steps=evaluation.total_episodes(request),
            submitted_by=submitted_by,
            message=evaluation.queued_message(request),
        )
        run.created_at.GetCurrentTime()
        self._write_job_inputs(run, None, None)
        run, _ = self.runs.create(run, submitted, f"QUEUED by {submitted_by}: {run.message}")
        log.info(
            "evaluation submitted",
            extra={"run_id": run_id, "contenders": len(request.contenders), "by": submitted_by},
        )
        return run

    def _write_job_inputs(
        self, run: trainer_pb2.Run, selection: Selection | None, scene_gate: SceneGate | None
    ) -> None:
        """Prepares the run folder: a training's episodes, then `job.json` (see `job.files`)."""
        run_dir = self.supervisor.run_dir(run.run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        if selection is not None:
            files.write_episodes(run_dir / files.TRAIN_EPISODES, selection.train)
            files.write_episodes(run_dir / files.VALIDATION_EPISODES, selection.validation)
        inputs = JobInputs(
            run_id=run.run_id,
            spec=run.spec,
            # Resolved: the job may start in another working directory.
            store_data_dir=str(Path(self.config.store_data_dir).resolve()),
            model_base=str(Path(self.config.model_base).resolve()),
            selection=selection.description if selection is not None else {},
            scene_gate=scene_gate,
        )
        files.write_inputs(run_dir, inputs)

    def get(self, run_id: str) -> trainer_pb2.Run:
        """The run `run_id`."""
        return self.runs.get(run_id)

    def list(self, request: trainer_pb2.ListRunsRequest) -> trainer_pb2.ListRunsResponse:
        """A page of runs, of one state when the request names one.

        Raises:
            InvalidArgument: the state is not a run state.
        """
        if request.state not in trainer_pb2.RunState.values():
            raise InvalidArgument(f"state={request.state} is not a run state")
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        runs, token = self.runs.list(request.state, size, request.page_token)
        return trainer_pb2.ListRunsResponse(runs=runs, next_page_token=token)

    def watch(self, run_id: str, active: Callable[[], bool]) -> Iterator[trainer_pb2.RunEvent]:
        """The run's current state, then every change, until it ends or `active()` is false."""
        latest = self.runs.latest_event(run_id)
        yield _event(latest)
        revision, state = latest.revision, latest.run.state
        while state not in TERMINAL and active() and not self.stopping.is_set():
            self.stopping.wait(self.config.watch_interval_s)
            for event in self.runs.events_after(run_id, revision):
                yield _event(event)
                revision, state = event.revision, event.run.state

    def cancel(self, run_id: str) -> trainer_pb2.Run:
        """Cancels a run; a cancelled evaluation also stops its sim-farm collections."""
        before = self.runs.get(run_id)  # NotFound before anything else
        run = self.supervisor.cancel(run_id)
        if (
            evaluation.is_evaluation(run.spec)
            and before.state not in TERMINAL
            and run.state == trainer_pb2.RUN_STATE_CANCELLED
        ):
            # The job is stopped; the farm's shards would play on without this.
            evaluation.stop_collections(self.config, run)
        return run

    def versions(self, name: str) -> list[trainer_pb2.ModelVersion]:
        """The published versions of model `name` (the default model when empty)."""
        return self.registry.versions(name or self.config.default_model_name)

    def set_label(self, name: str, version: int, label: str, by: str) -> trainer_pb2.ModelVersion:
        """Moves `label` to `version` of model `name`; returns the version as now labelled.

        Raises:
            InvalidArgument: no version or no label given.
        """
        if version <= 0:
            raise InvalidArgument(f"version={version}: name a published version (1, 2, ...)")
        if not label:
            raise InvalidArgument('label is required, e.g. "stable" or "canary"')
        name = name or self.config.default_model_name
        described = self.registry.set_label(name, version, label, by=by, reason="SetVersionLabel")
        log.info("label set", extra={"model": name, "label": label, "version": version, "by": by})
        return described

    def label_changes(self, name: str, label: str) -> list[trainer_pb2.LabelChange]:
        """The model's label history, oldest first (only `label`'s when given).

        Raises:
            NotFound: no such model.
        """
        name = name or self.config.default_model_name
        if name not in self.registry.model_names():
            raise NotFound(f"no model {name!r} (models: {sorted(self.registry.model_names())})")
        changes = []
        for entry in self.registry.history(name):
            if label and entry.get("label") != label:
                continue
            change = trainer_pb2.LabelChange(
                action=str(entry.get("action", "")),
                label=str(entry.get("label", "")),
                version=int(entry.get("version") or 0),
                previous=int(entry.get("previous") or 0),
                by=str(entry.get("by", "")),
                reason=str(entry.get("reason", "")),
            )
            # An entry written by hand without a readable time keeps its place, not a time.
            with contextlib.suppress(KeyError, TypeError, ValueError):
                change.time.FromDatetime(datetime.datetime.fromisoformat(entry["time"]))
            changes.append(change)
        return changes

    def rollback(self, name: str, label: str, by: str) -> trainer_pb2.ModelVersion:
        """Moves `label` back to the version that held it before the current one; returns it.

        Raises:
            InvalidArgument: no label given.
        """
        if not label:
            raise InvalidArgument('label is required, e.g. "stable"')
        name = name or self.config.default_model_name
        described = self.registry.rollback(name, label, by=by, reason="RollbackVersionLabel")
        log.info(
            "label rolled back",
            extra={"model": name, "label": label, "version": described.version, "by": by},
        )
        return described
