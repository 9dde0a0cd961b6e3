"""The run's job: `graspfleet train job --run-dir DIR`, a local process or a Kubernetes pod.

It trains on the episodes the trainer selected (for the refiner recipes, after
the generator resolved at submission rewrote their images:
`refine_dataset.prepare`), scores the candidate and the current stable version
on the same held-out real episodes, and publishes the candidate as the next
version only if the gate passes. The generator recipes go to
`generator_job`, evaluations (recipe EVALUATION) to `evaluation_job`. A
training job talks to nobody: it reads its inputs from the run folder, the
shards from the store's data folder and the stable version from the model base,
and reports through the run folder's progress and result files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from google.protobuf import json_format

from graspfleet.v1 import trainer_pb2
from models.registry import STABLE, Registry
from services.common import logs
from services.trainer import (
    evaluation_job,
    gate,
    generator_job,
    jobfiles,
    recipes,
    refine_dataset,
)
from services.trainer.jobfiles import Progress, Result
from services.trainer.recipes import Recipe
from services.trainer.selection import Selection

# Scratch folder of the rewritten (refined, canonical) shards inside the run folder.
WORK_DIR = "work"

log = logs.get_logger(__name__)


def write_inputs(
    run_dir: Path,
    run: trainer_pb2.Run,
    recipe: Recipe,
    selection: Selection,
    *,
    store_data_dir: str,
    model_base: str,
    generator: dict | None = None,
    scene_gate: dict | None = None,
) -> None:
    """Writes what the job needs into the run folder (the trainer calls this at submit).

    Args:
        run_dir: The run's folder.
        run: The accepted run, its spec normalized.
        recipe: Its recipe.
        selection: The episodes it trains and validates on.
        store_data_dir: The store's data folder as the job sees it.
        model_base: The model repository.
        generator: The generator version a refiner recipe applies (`spec.generator`).
        scene_gate: The generator gate's thresholds ({"min_mask_accuracy", "min_mask_iou"}).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    params, data = run.spec.params, run.spec.data
    jobfiles.write_episodes(run_dir / jobfiles.TRAIN_EPISODES, selection.train)
    jobfiles.write_episodes(run_dir / jobfiles.VALIDATION_EPISODES, selection.validation)
    job = {
        "run_id": run.run_id,
        "model_name": run.spec.model_name,
        "recipe": trainer_pb2.Recipe.Name(recipe.value),
        "gate": {
            "enabled": run.spec.gate.enabled,
            "max_regression": run.spec.gate.max_regression,
        },
        "store_data_dir": str(Path(store_data_dir).resolve()),
        "model_base": str(Path(model_base).resolve()),
        "selection": selection.description,
        "spec": json_format.MessageToDict(run.spec),
        "generator": generator,
    }
    if recipe.is_generator:
        job["generator_spec"] = generator_job.spec_fields(recipe, params)
        job["scene_gate"] = scene_gate or {"min_mask_accuracy": 0.0, "min_mask_iou": 0.0}
    else:
        job["train_spec"] = {
            **recipes.train_spec_fields(recipe),
            "profile": params.profile,
            "steps": params.steps,
            "batch_size": params.batch_size,
            "learning_rate": params.learning_rate,
            "seed": params.seed,
            "dann_weight": params.weights.get("dann", 0.1),
            "scene_weight": params.weights.get("scene", 0.0),
            "validation_fraction": data.validation_fraction,
            "log_every": max(1, min(100, params.steps // 10)),
        }
    jobfiles.write_json(run_dir / jobfiles.JOB_FILE, job)


def run(run_dir: Path) -> int:
    """Runs the job of `run_dir`; the exit code is 0 when it reached a verdict."""
    job = jobfiles.read_json(run_dir / jobfiles.JOB_FILE)
    if job is None:
        print(f"graspfleet train job: {run_dir / jobfiles.JOB_FILE} is missing", file=sys.stderr)
        return 2
    try:
        if job["recipe"] == trainer_pb2.Recipe.Name(trainer_pb2.RECIPE_EVALUATION):
            result = evaluation_job.evaluate(run_dir, job)
        else:
            recipe = recipes.lookup(job["recipe"])
            if recipe.is_generator:
                result = generator_job.train_and_gate(run_dir, job, recipe)
            else:
                result = _train_and_gate(run_dir, job, recipe)
    except jobfiles.Cancelled as cancelled:
        result = Result("CANCELLED", str(cancelled))
    except Exception as err:  # noqa: BLE001 - every failure must reach the trainer as a result
        log.exception("job failed")
        result = Result("FAILED", f"{type(err).__name__}: {err}")
    finally:
        # Rewritten shards can be as large as the data; the model's metadata says what they were.
        shutil.rmtree(run_dir / WORK_DIR, ignore_errors=True)
    jobfiles.write_result(run_dir, result)
    log.info("job finished", extra={"state": result.state, "result": result.message})
    return 0 if result.state != "FAILED" else 1


def _train_and_gate(run_dir: Path, job: dict, recipe: Recipe) -> Result:
    from models.grasp_success import export, training

    spec = training.TrainSpec(**job["train_spec"])
    data_root, name = job["store_data_dir"], job["model_name"]
    jobfiles.write_progress(run_dir, Progress(total=spec.steps, message="loading data"))
    prepared = refine_dataset.prepare(
        recipe,
        job.get("generator"),
        data_root,
        job["model_base"],
        jobfiles.read_episodes(run_dir / jobfiles.TRAIN_EPISODES),
        jobfiles.read_episodes(run_dir / jobfiles.VALIDATION_EPISODES),
        run_dir / WORK_DIR,
        lambda message: jobfiles.write_progress(
            run_dir, Progress(total=spec.steps, message=message)
        ),
    )
    train_episodes, validation = prepared.train, prepared.validation

    def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
        jobfiles.write_progress(run_dir, Progress(jobfiles.TRAINING, step, total, metrics))

    trained = training.train(
        spec,
        data_root,
        train_episodes,
        validation,
        None,
        name=name,
        log_dir=run_dir / jobfiles.TENSORBOARD_DIR,
        on_progress=on_progress,
        progress_bar=False,
        data_selection=job["selection"],
    )
    metrics = {**trained.train_metrics}
    metrics |= {f"validation_{k}": v for k, v in trained.metrics.items()}
    message = "scoring the candidate and stable on the held-out real episodes"
    jobfiles.write_progress(
        run_dir, Progress(jobfiles.VALIDATING, spec.steps, spec.steps, metrics, message)
    )
    candidate = export.ServingModule(trained.model)
    accuracy, samples = gate.serving_accuracy(candidate.serve, data_root, validation)
    model_base = Path(job["model_base"])
    stable_version = Registry(model_base).labels(name).get(STABLE)
    stable_accuracy = None
    if stable_version is not None:
        try:
            stable = gate.load_serving(model_base / name / str(stable_version))
            stable_accuracy, _ = gate.serving_accuracy(stable, data_root, validation)
        except Exception as err:
            raise RuntimeError(
                f"stable version {stable_version} of {name!r} could not be scored on this "
                f"run's validation episodes ({type(err).__name__}: {err}); the gate cannot "
                "compare, so nothing was published"
            ) from err
    decision = gate.decide(
        accuracy,
        stable_accuracy,
        stable_version,
        samples,
        enabled=job["gate"]["enabled"],
        max_regression=job["gate"]["max_regression"],
    )
    metrics |= {f"gate_{k}": v for k, v in decision.metrics.items()}
    if not decision.passed:
        return Result("REJECTED", decision.message, metrics)
    size = validation[0].image_size
    metadata = {
        **trained.metadata,
        **prepared.metadata,
        "trainer": {
            "run_id": job["run_id"],
            "recipe": job["recipe"],
            "gate": {"passed": True, "message": decision.message, **decision.metrics},
            "spec": job["spec"],
        },
    }
    jobfiles.raise_if_cancelled(run_dir)
    version, _ = export.export_model(
        trained.model, model_base, name, metadata, image_size=(size.height, size.width)
    )
    return Result("SUCCEEDED", f"{decision.message}; published {name}:{version}", metrics, version)


def main(argv: list[str] | None = None) -> int:
    """`graspfleet train job --run-dir DIR`."""
    parser = argparse.ArgumentParser(prog="graspfleet train job", description=__doc__)
    parser.add_argument("--run-dir", required=True, help="the run folder the trainer prepared")
    args = parser.parse_args(argv)
    logs.configure_logging("trainer-job", "INFO", "text")
    return run(Path(args.run_dir))
