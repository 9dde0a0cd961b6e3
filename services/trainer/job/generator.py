"""The generator recipes' job: train GraspGAN's or RCAN's generator, gate it on the scene, publish it.

GraspGAN learns from the run's simulated episodes (with masks) and real
episodes; RCAN from its simulated episodes that carry canonical renders. Both
are scored on held-out simulated episodes against the simulator's masks
(`gate.decide_scene`), and a passing generator is exported as the next version
of its model (`models/generators/export.py`); the trainer then labels it canary
like a grasp model.
"""

from __future__ import annotations

from pathlib import Path

from graspfleet.v1 import trainer_pb2
from models.generators import export
from models.generators.graspgan import GraspGANConfig
from models.generators.graspgan_training import GraspGANSpec, train_graspgan
from models.generators.rcan import RCANSpec
from models.generators.rcan_training import train_rcan
from services.trainer.job import files, gate, refine_dataset
from services.trainer.job.files import Progress, Result
from services.trainer.job.inputs import JobInputs
from services.trainer.recipes import GRASPGAN, Recipe, task_profile
from services.trainer.spec import GRASPGAN_LOSS_WEIGHTS, RCAN_WEIGHTS


def model_spec(recipe: Recipe, params: trainer_pb2.TrainingParams) -> GraspGANSpec | RCANSpec:
    """The GraspGANSpec or RCANSpec of a normalized run's parameters."""
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
        return GraspGANSpec(
            **common,
            recipe="graspgan",
            task_profile=task_profile(params.profile),
            generator_lr=params.learning_rate,
            discriminator_lr=params.learning_rate,
            # The paper's GraspGAN trains C with DBN and DANN on refined sim and real data.
            dbn=True,
            dann=True,
            dann_weight=weights.get("dann", 0.1),
            real_labels=bool(weights.get("real_task", 1.0)),
            losses=GraspGANConfig(**{k: weights[k] for k in GRASPGAN_LOSS_WEIGHTS if k in weights}),
        )
    return RCANSpec(
        **common,
        recipe="rcan",
        learning_rate=params.learning_rate,
        **{k: weights[k] for k in RCAN_WEIGHTS if k in weights},
    )


def train_and_gate(run_dir: Path, inputs: JobInputs, recipe: Recipe) -> Result:
    """Trains the generator `inputs` describe, gates it on the scene and publishes it.

    Raises:
        files.Cancelled: the run was cancelled before the generator was published.
        ValueError: RCAN's episodes carry no canonical renders.
    """
    data_root, name = inputs.store_data_dir, inputs.spec.model_name
    spec = model_spec(recipe, inputs.spec.params)
    train = files.read_episodes(run_dir / files.TRAIN_EPISODES)
    validation = files.read_episodes(run_dir / files.VALIDATION_EPISODES)
    steps = spec.steps
    files.write_progress(run_dir, Progress(total=steps, message="loading data"))
    notes: dict = {}
    if recipe.trains != GRASPGAN:
        train, validation, notes = _canonical_only(data_root, train, validation)

    def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
        files.write_progress(run_dir, Progress(files.TRAINING, step, total, metrics))

    options = {
        "name": name,
        "log_dir": run_dir / files.TENSORBOARD_DIR,
        "on_progress": on_progress,
        "progress_bar": False,
        "data_selection": {**inputs.selection, **notes},
    }
    if isinstance(spec, GraspGANSpec):
        trained = train_graspgan(spec, data_root, train, validation, None, **options)
        kind = export.KIND_GRASPGAN
    else:
        trained = train_rcan(spec, data_root, train, validation, None, **options)
        kind = export.KIND_RCAN
    metrics = {**trained.train_metrics}
    metrics |= {f"validation_{k}": v for k, v in trained.metrics.items()}
    files.write_progress(
        run_dir,
        Progress(files.VALIDATING, steps, steps, metrics, "checking the scene is kept"),
    )
    decision = gate.decide_scene(
        trained.metrics,
        enabled=inputs.spec.gate.enabled,
        min_mask_accuracy=inputs.scene_gate.min_mask_accuracy,
        min_mask_iou=inputs.scene_gate.min_mask_iou,
    )
    metrics |= {f"gate_{k}": v for k, v in decision.metrics.items()}
    if not decision.passed:
        return Result("REJECTED", decision.message, metrics)
    size = train[0].image_size
    metadata = {
        **trained.metadata,
        "validation_metrics": trained.metrics,
        "trainer": {
            "run_id": inputs.run_id,
            "recipe": inputs.recipe_name,
            "gate": {"passed": True, "message": decision.message, **decision.metrics},
            "spec": inputs.spec_json(),
        },
    }
    files.raise_if_cancelled(run_dir)
    path = export.export_generator(
        trained.models.generator, inputs.model_base, name, kind, (size.height, size.width), metadata
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
