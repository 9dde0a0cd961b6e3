"""The generator recipes' job: train GraspGAN's or RCAN's generator, gate it on the scene, publish it.

GraspGAN learns from the run's simulated episodes (with masks) and real
episodes; RCAN from its simulated episodes that carry canonical renders. Both
are scored on held-out simulated episodes against the simulator's masks
(`gate.decide_scene`), and a passing generator is exported as the next version
of its model (`models/generators/export.py`); the trainer then labels it canary
like a grasp model. `spec_fields` runs in the trainer when a run is submitted
(without TensorFlow), `train_and_gate` in the job.
"""

from __future__ import annotations

from pathlib import Path

from graspfleet.v1 import trainer_pb2
from services.trainer import gate, jobfiles, refine_dataset
from services.trainer.jobfiles import Progress, Result
from services.trainer.recipes import GRASPGAN, Recipe, task_profile
from services.trainer.spec import GRASPGAN_LOSS_WEIGHTS, RCAN_WEIGHTS


def spec_fields(recipe: Recipe, params: trainer_pb2.TrainingParams) -> dict:
    """The GraspGANSpec or RCANSpec fields of a normalized run, as JSON for the job file."""
    weights = dict(params.weights)
    common = {
        "profile": params.profile,
        "steps": params.steps,
        "batch_size": params.batch_size,
        "seed": params.seed,
        "log_every": max(1, min(100, params.steps // 10)),
        # One image grid at the end of a short run, five over a long one.
        "image_every": max(1, params.steps // 5),
    }
    if recipe.trains == GRASPGAN:
        return {
            **common,
            "recipe": "graspgan",
            "task_profile": task_profile(params.profile),
            "generator_lr": params.learning_rate,
            "discriminator_lr": params.learning_rate,
            # The paper's GraspGAN trains C with DBN and DANN on refined sim and real data.
            "dbn": True,
            "dann": True,
            "dann_weight": weights.get("dann", 0.1),
            "real_labels": bool(weights.get("real_task", 1.0)),
            "losses": {k: weights[k] for k in GRASPGAN_LOSS_WEIGHTS if k in weights},
        }
    return {
        **common,
        "recipe": "rcan",
        "learning_rate": params.learning_rate,
        **{k: weights[k] for k in RCAN_WEIGHTS if k in weights},
    }


def train_and_gate(run_dir: Path, job: dict, recipe: Recipe) -> Result:
    """Trains the generator `job` describes, gates it on the scene and publishes it."""
    from models.generators import export

    data_root, name = job["store_data_dir"], job["model_name"]
    train = jobfiles.read_episodes(run_dir / jobfiles.TRAIN_EPISODES)
    validation = jobfiles.read_episodes(run_dir / jobfiles.VALIDATION_EPISODES)
    steps = job["generator_spec"]["steps"]
    jobfiles.write_progress(run_dir, Progress(total=steps, message="loading data"))
    notes: dict = {}
    if recipe.trains != GRASPGAN:
        train, validation, notes = _canonical_only(data_root, train, validation)

    def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
        jobfiles.write_progress(run_dir, Progress(jobfiles.TRAINING, step, total, metrics))

    options = {
        "name": name,
        "log_dir": run_dir / jobfiles.TENSORBOARD_DIR,
        "on_progress": on_progress,
        "progress_bar": False,
        "data_selection": {**job["selection"], **notes},
    }
    if recipe.trains == GRASPGAN:
        from models.generators.graspgan_training import GraspGANSpec, train_graspgan

        spec = GraspGANSpec(**job["generator_spec"])
        trained = train_graspgan(spec, data_root, train, validation, None, **options)
        kind = export.KIND_GRASPGAN
    else:
        from models.generators.rcan import RCANSpec
        from models.generators.rcan_training import train_rcan

        spec = RCANSpec(**job["generator_spec"])
        trained = train_rcan(spec, data_root, train, validation, None, **options)
        kind = export.KIND_RCAN
    metrics = {**trained.train_metrics}
    metrics |= {f"validation_{k}": v for k, v in trained.metrics.items()}
    jobfiles.write_progress(
        run_dir,
        Progress(jobfiles.VALIDATING, steps, steps, metrics, "checking the scene is kept"),
    )
    decision = gate.decide_scene(
        trained.metrics,
        enabled=job["gate"]["enabled"],
        min_mask_accuracy=job["scene_gate"]["min_mask_accuracy"],
        min_mask_iou=job["scene_gate"]["min_mask_iou"],
    )
    metrics |= {f"gate_{k}": v for k, v in decision.metrics.items()}
    if not decision.passed:
        return Result("REJECTED", decision.message, metrics)
    size = train[0].image_size
    metadata = {
        **trained.metadata,
        "validation_metrics": trained.metrics,
        "trainer": {
            "run_id": job["run_id"],
            "recipe": job["recipe"],
            "gate": {"passed": True, "message": decision.message, **decision.metrics},
            "spec": job["spec"],
        },
    }
    jobfiles.raise_if_cancelled(run_dir)
    path = export.export_generator(
        trained.models.generator, job["model_base"], name, kind, (size.height, size.width), metadata
    )
    version = int(path.name)
    return Result("SUCCEEDED", f"{decision.message}; published {name}:{version}", metrics, version)


def _canonical_only(data_root: str, train: list, validation: list) -> tuple[list, list, dict]:
    """RCAN's episodes reduced to those with canonical renders (the store cannot filter on them).

    Raises:
        ValueError: no training or no held-out episode carries them.
    """
    train, left_out = refine_dataset.with_canonical(data_root, train)
    held_out, held_out_left = refine_dataset.with_canonical(data_root, validation)
    if not train or not held_out:
        side = "training" if not train else "held-out"
        raise ValueError(
            f"none of the {side} simulated episodes carries canonical renders: collect them "
            "with render_canonical (sim-farm StartCollection) and select them by "
            "data.object_set or the time window"
        )
    notes = {
        "without_canonical_renders": {"train": len(left_out), "validation": len(held_out_left)}
    }
    return train, held_out, notes
