"""The evaluation job: what `graspfleet train job` does for a run of recipe EVALUATION.

It plays every contender's scenes on the sim-farm (`closed_loop.evaluate`) with
the run id as the evaluation id, so the farm's collection ids are the run's own
and a job started again for the same run folder rejoins a collection the farm
still runs, or continues after the episodes the store already holds. It
reports the episodes done through the run folder's progress file, writes the
report (`evaluation.json`) and ends with each contender's rate and every
paired difference as the run's metrics. It publishes nothing and has no gate.
The farm and the store are the trainer's, named in the job's environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from models.scoring import rate_text
from services.evaluation import closed_loop
from services.evaluation.closed_loop import ContenderResult, EvaluationSpec
from services.trainer.evaluation import FARM_ENV, STORE_ENV, contenders
from services.trainer.job import files
from services.trainer.job.files import Progress, Result
from services.trainer.job.inputs import JobInputs


def evaluate(run_dir: Path, inputs: JobInputs) -> Result:
    """Runs (or continues) the evaluation `inputs` describe; the report goes into `run_dir`.

    Raises:
        files.Cancelled: the run was cancelled; checked at every poll of the farm.
        RuntimeError: the farm or the store is not named, cannot be reached, or a
            contender's collection failed; the message says which.
    """
    farm, store = os.environ.get(FARM_ENV, ""), os.environ.get(STORE_ENV, "")
    if not farm or not store:
        raise RuntimeError(
            f"{FARM_ENV} and {STORE_ENV} must name the sim-farm and the episode store (the "
            "trainer sets them on the jobs it starts)"
        )
    # The trainer resolved every contender's version into the spec when it accepted the run.
    request = inputs.spec.evaluation
    spec = EvaluationSpec(
        inputs.run_id,
        request.arm_config_yaml,
        scenes=request.scenes,
        seed=request.seed,
        shards=request.shards,
    )
    players = contenders(request)
    total = spec.scenes * len(players)
    finished: dict[str, float] = {}
    ended: list[str] = []

    def report_progress(name: str, done: int, scenes: int) -> None:
        files.raise_if_cancelled(run_dir)
        # A contender that just ended is counted in `ended`, its scenes no longer in `done`.
        step = len(ended) * spec.scenes + (0 if name in ended else done)
        message = f"{name}: {done}/{scenes} scenes"
        files.write_progress(
            run_dir, Progress(files.TRAINING, step, total, dict(finished), message)
        )

    def contender_done(result: ContenderResult) -> None:
        ended.append(result.contender.name)
        finished.update(contender_metrics(result.contender.name, result.rate.as_dict()))
        report_progress(result.contender.name, spec.scenes, spec.scenes)

    files.write_progress(
        run_dir, Progress(total=total, message=f"starting {players[0].name}'s collection")
    )
    try:
        results = closed_loop.evaluate(farm, store, spec, players, report_progress, contender_done)
    except grpc.RpcError as err:
        raise RuntimeError(
            f"the sim-farm ({farm}) or the store ({store}) answered {err.code().name}: "
            f"{err.details()}"
        ) from None
    report = closed_loop.report(spec, results)
    path = run_dir / files.REPORT_FILE
    files.write_json(path, report)
    return Result("SUCCEEDED", summary(report, path), metrics(report))


def contender_metrics(name: str, rate: dict) -> dict[str, float]:
    """One contender's run metrics from its rate (`stats.Rate.as_dict()`)."""
    return {
        f"{name}.success_rate": float(rate["rate"]),
        f"{name}.low": float(rate["low"]),
        f"{name}.high": float(rate["high"]),
        f"{name}.successes": float(rate["successes"]),
        f"{name}.episodes": float(rate["episodes"]),
    }


def metrics(report: dict) -> dict[str, float]:
    """The run's metrics from a report: every contender's rate, every pair's difference (A/B)."""
    found: dict[str, float] = {}
    for row in report["contenders"]:
        found |= contender_metrics(row["name"], row)
    for pair in report["paired"]:
        key = f"{pair['a']}/{pair['b']}"
        found |= {
            f"{key}.difference": float(pair["difference"]),
            f"{key}.low": float(pair["low"]),
            f"{key}.high": float(pair["high"]),
        }
    return found


def summary(report: dict, path: Path) -> str:
    """The run's message: each contender's rate with its interval, and where the report is."""
    rates = ", ".join(f"{row['name']} {rate_text(row)}" for row in report["contenders"])
    return (
        f"{rates} on {report['scenes']} scenes of arm {report['arm']}; "
        f"report with the paired differences: {path}"
    )
