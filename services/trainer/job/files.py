"""The run folder: how the trainer hands a job its inputs and how the job reports back.

`<runs_dir>/<run_id>/` holds, from the trainer, `job.json` (`JobInputs`: what
to train or evaluate) and a training's selected episodes (`train.binpb`,
`validation.binpb`, each a serialized ListEpisodesResponse); from the job,
`progress.json` (rewritten every few steps or episodes) and `result.json`
(once, at the end), plus TensorBoard logs or an evaluation's report
(`evaluation.json`), its scratch folder of rewritten shards (`work/`, removed
when it ends) and, on the local backend, `job.log`; the trainer also notes the
job's handle in `job.handle` the moment the job starts, before it records it in
the database, and leaves `cancelled` when the run is cancelled: a job that
outlives the cancel (a late signal, a pod still terminating) checks it before
publishing, or before its next evaluation episode, and stops. Every file is
replaced atomically (temp file + rename), so a reader never sees half of one.
Files rather than the database keep the trainer the run database's only writer
and work the same whether the job is a local process or a Kubernetes pod
sharing the folder. Shared with the service side: no TensorFlow here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from graspfleet.v1 import episode_store_pb2
from services.common.files import write_atomically
from services.trainer.job.inputs import JobInputs

JOB_FILE = "job.json"
TRAIN_EPISODES = "train.binpb"
VALIDATION_EPISODES = "validation.binpb"
PROGRESS_FILE = "progress.json"
RESULT_FILE = "result.json"
LOG_FILE = "job.log"
HANDLE_FILE = "job.handle"
CANCEL_FILE = "cancelled"
REPORT_FILE = "evaluation.json"
TENSORBOARD_DIR = "tensorboard"
# Scratch folder of the rewritten (refined, canonical) shards.
WORK_DIR = "work"

# Phases a job reports; "validating" maps to RUN_STATE_VALIDATING.
TRAINING = "training"
VALIDATING = "validating"


@dataclass(frozen=True)
class Progress:
    """What a job reported last."""

    phase: str = TRAINING
    step: int = 0
    total: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class Result:
    """How a job ended.

    Attributes:
        state: "SUCCEEDED", "REJECTED", "FAILED" or "CANCELLED" (the run was cancelled
            before the job published).
        message: A sentence a person can act on (the gate's numbers when rejected).
        metrics: Final training, validation and gate metrics.
        version: The version the job exported (SUCCEEDED only).
    """

    state: str
    message: str
    metrics: dict[str, float] = field(default_factory=dict)
    version: int = 0


class Cancelled(Exception):
    """The run was cancelled while its job still ran; nothing may be published."""


def mark_cancelled(run_dir: Path) -> None:
    """Leaves the cancel marker in the run folder (a run without one has nothing to stop)."""
    if run_dir.is_dir():
        write_atomically(run_dir / CANCEL_FILE, "cancelled on request\n")


def raise_if_cancelled(run_dir: Path) -> None:
    """Raises Cancelled when the trainer has cancelled the run; jobs call it before publishing.

    Raises:
        Cancelled: the cancel marker is there.
    """
    if (run_dir / CANCEL_FILE).exists():
        raise Cancelled("the run was cancelled before its job published; nothing was published")


def write_json(path: Path, value: dict) -> None:
    """Replaces `path` atomically with `value` as JSON, durable once this returns."""
    write_atomically(path, json.dumps(value, indent=1, sort_keys=True))


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when the file does not exist (yet)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_inputs(run_dir: Path, inputs: JobInputs) -> None:
    """Writes `job.json`; the trainer calls it last, once the run's episodes are in place."""
    write_atomically(run_dir / JOB_FILE, inputs.to_json())


def read_inputs(run_dir: Path) -> JobInputs:
    """The run's `job.json`.

    Raises:
        FileNotFoundError: there is none.
        JobInputsError: it is not what this release writes; the message names the field.
    """
    return JobInputs.from_json((run_dir / JOB_FILE).read_text())


def write_episodes(path: Path, episodes: list[episode_store_pb2.EpisodeSummary]) -> None:
    """Writes the run's episode summaries to `path`, atomically."""
    write_atomically(
        path, episode_store_pb2.ListEpisodesResponse(episodes=episodes).SerializeToString()
    )


def read_episodes(path: Path) -> list[episode_store_pb2.EpisodeSummary]:
    """The episode summaries `write_episodes` wrote to `path`."""
    return list(episode_store_pb2.ListEpisodesResponse.FromString(path.read_bytes()).episodes)


def write_progress(run_dir: Path, progress: Progress) -> None:
    """Writes the job's progress to the run folder, atomically."""
    write_json(
        run_dir / PROGRESS_FILE,
        {
            "phase": progress.phase,
            "step": progress.step,
            "total": progress.total,
            "metrics": progress.metrics,
            "message": progress.message,
        },
    )


def read_progress(run_dir: Path) -> Progress | None:
    """The job's last progress, or None before it reported any."""
    raw = read_json(run_dir / PROGRESS_FILE)
    if raw is None:
        return None
    return Progress(
        phase=raw.get("phase", TRAINING),
        step=int(raw.get("step", 0)),
        total=int(raw.get("total", 0)),
        metrics={k: float(v) for k, v in raw.get("metrics", {}).items()},
        message=str(raw.get("message", "")),
    )


def write_result(run_dir: Path, result: Result) -> None:
    """Writes how the job ended to the run folder, atomically."""
    write_json(
        run_dir / RESULT_FILE,
        {
            "state": result.state,
            "message": result.message,
            "metrics": result.metrics,
            "version": result.version,
        },
    )


def read_result(run_dir: Path) -> Result | None:
    """How the job ended, or None while it has not."""
    raw = read_json(run_dir / RESULT_FILE)
    if raw is None:
        return None
    return Result(
        state=str(raw["state"]),
        message=str(raw.get("message", "")),
        metrics={k: float(v) for k, v in raw.get("metrics", {}).items()},
        version=int(raw.get("version", 0)),
    )
