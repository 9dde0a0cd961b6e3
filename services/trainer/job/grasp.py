"""The grasp recipes' job: train a grasp-success model, gate it against stable, publish it.

It trains on the episodes the trainer selected (for the refining recipes,
after the generator resolved at submission rewrote their images:
`refine_dataset.prepare`), from random weights or from those of the version
`start_from` names, scores the candidate and the current stable
version on the same held-out real episodes, and publishes the candidate as the
next version only if the gate passes. It reads the shards from the store's
data folder and the stable version from the model base.
"""

from __future__ import annotations

from pathlib import Path

from graspfleet.v1 import trainer_pb2
from models.grasp_success import export, training
from models.registry import STABLE, Registry
from services.trainer import recipes
from services.trainer.job import files, gate, refine_dataset
from services.trainer.job.files import Progress, Result
from services.trainer.job.inputs import JobInputs
from services.trainer.recipes import Recipe
from services.trainer.versions import applied_generator


def train_spec(recipe: Recipe, spec: trainer_pb2.RunSpec) -> training.TrainSpec:
    """The TrainSpec of a normalized run: the recipe's regime and the spec's parameters."""
    params = spec.params
    return training.TrainSpec(
        **recipes.train_spec_fields(recipe),
        profile=params.profile,
        steps=params.steps,
        batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        seed=params.seed,
        dann_weight=params.weights.get("dann", 0.1),
        scene_weight=params.weights.get("scene", 0.0),
        validation_fraction=spec.data.validation_fraction,
        log_every=max(1, min(100, params.steps // 10)),
    )


def train_and_gate(run_dir: Path, inputs: JobInputs, recipe: Recipe) -> Result:
    """Trains the grasp model `inputs` describe, gates it against stable and publishes it.

    Raises:
        files.Cancelled: the run was cancelled before the model was published.
        RuntimeError: the stable version cannot be scored, so the gate cannot compare.
        ValueError: the generator cannot be applied to the selected episodes.
    """
    spec = train_spec(recipe, inputs.spec)
    data_root, name = inputs.store_data_dir, inputs.spec.model_name
    files.write_progress(run_dir, Progress(total=spec.steps, message="loading data"))
    prepared = refine_dataset.prepare(
        recipe,
        applied_generator(inputs.spec, recipe),
        data_root,
        inputs.model_base,
        files.read_episodes(run_dir / files.TRAIN_EPISODES),
        files.read_episodes(run_dir / files.VALIDATION_EPISODES),
        run_dir / files.WORK_DIR,
        lambda message: files.write_progress(run_dir, Progress(total=spec.steps, message=message)),
    )
    train_episodes, validation = prepared.train, prepared.validation

    def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
        files.write_progress(run_dir, Progress(files.TRAINING, step, total, metrics))

    model_base = Path(inputs.model_base)
    start = None
    if inputs.spec.HasField("start_from"):  # resolved and checked at submission
        start = export.training_weights(model_base / name / str(inputs.spec.start_from.version))
    trained = training.train(
        spec,
        data_root,
        train_episodes,
        validation,
        None,
        name=name,
        log_dir=run_dir / files.TENSORBOARD_DIR,
        on_progress=on_progress,
        progress_bar=False,
        data_selection=dict(inputs.selection),
        initial_weights=start,
    )
    metrics = {**trained.train_metrics}
    metrics |= {f"validation_{k}": v for k, v in trained.metrics.items()}
    message = "scoring the candidate and stable on the held-out real episodes"
    files.write_progress(
        run_dir, Progress(files.VALIDATING, spec.steps, spec.steps, metrics, message)
    )
    decision = _gate(trained.model, inputs, validation)
    metrics |= {f"gate_{k}": v for k, v in decision.metrics.items()}
    if not decision.passed:
        return Result("REJECTED", decision.message, metrics)
    size = validation[0].image_size
    metadata = {
        **trained.metadata,
        **prepared.metadata,
        "trainer": {
            "run_id": inputs.run_id,
            "recipe": inputs.recipe_name,
            "gate": {"passed": True, "message": decision.message, **decision.metrics},
            "spec": inputs.spec_json(),
        },
    }
    files.raise_if_cancelled(run_dir)
    version, _ = export.export_model(
        trained.model, model_base, name, metadata, image_size=(size.height, size.width)
    )
    return Result("SUCCEEDED", f"{decision.message}; published {name}:{version}", metrics, version)


def _gate(model, inputs: JobInputs, validation: list) -> gate.Decision:
    """The gate's decision: the candidate and stable scored on the same held-out real episodes.

    Raises:
        RuntimeError: the stable version cannot be scored, so the gate cannot compare.
    """
    data_root, name = inputs.store_data_dir, inputs.spec.model_name
    model_base = Path(inputs.model_base)
    candidate = export.ServingModule(model)
    candidate_auc, samples = gate.serving_auc(candidate.serve, data_root, validation)
    stable_version = Registry(model_base).labels(name).get(STABLE)
    stable_auc = None
    if stable_version is not None:
        try:
            stable = gate.load_serving(model_base / name / str(stable_version))
            stable_auc, _ = gate.serving_auc(stable, data_root, validation)
        except Exception as err:
            raise RuntimeError(
                f"stable version {stable_version} of {name!r} could not be scored on this "
                f"run's validation episodes ({type(err).__name__}: {err}); the gate cannot "
                "compare, so nothing was published"
            ) from err
    return gate.decide(
        candidate_auc,
        stable_auc,
        stable_version,
        samples,
        enabled=inputs.spec.gate.enabled,
        max_regression=inputs.spec.gate.max_regression,
    )
