"""Training one grasp-success model from episode-store data, validated on held-out objects.

`train` is the whole job: balanced batches from the store, the training loop
(task loss, plus the DANN domain loss when the recipe asks for it), validation
on episodes whose objects training never saw, TensorBoard logs, and the export
of a new SavedModel version with its metadata. `fit` is the loop alone, over
any batches, for experiments and tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tqdm import tqdm

from graspfleet.v1 import common_pb2, episode_store_pb2
from models import scoring
from models.episodes.dataset import image_size
from models.episodes.selection import labeled
from models.grasp_success import export, profiles, samples
from models.grasp_success.model import (
    DOMAIN_LOGITS,
    LOGITS,
    SCENE_LOGITS,
    GraspSuccessModel,
    ModelConfig,
    build_model,
)
from models.grasp_success.samples import DOMAIN, LABEL, MASK, REAL, X0_MASK
from services.common.config import check_ranges

Summary = episode_store_pb2.EpisodeSummary
ProgressHook = Callable[[int, int, dict[str, float]], None]
TRAIN_METRICS = ("loss", "task_loss", "domain_loss", "scene_loss", "accuracy")
# What tf.summary.scalar writes, without needing the tensorboard package at training time.
_SCALAR = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)


@dataclass(frozen=True)
class TrainSpec:
    """One training run: the recipe's regime and the loop's settings.

    Attributes:
        recipe: Name of the recipe (e.g. "dbn-dann"), recorded with the model.
        profile: Network and image-size profile (`profiles.PROFILES`).
        steps: Optimizer steps.
        batch_size: Samples per batch (at least 2: batch norm).
        learning_rate: Adam's learning rate.
        seed: Seeds weights, batch composition, shuffling and crops.
        dbn: Domain-specific batch norm.
        dann: Domain-adversarial loss on the last conv layer.
        dann_weight: Factor of the reversed domain gradient reaching the shared layers.
        scene_weight: Weight of the auxiliary scene loss: from C1's features, predict
            where the objects are in x0 and where the arm is in xt, against the
            simulated masks (SIM samples only). Dense supervision of *where* things
            are, which a few thousand success labels teach poorly. 0 turns it off.
        sim_fraction: Expected share of SIM samples per batch (0 real-only, 1 sim-only).
        positive_fraction: Expected share of successful samples per domain.
        validation_fraction: Share of episodes `models.episodes.selection.split_episodes` holds out.
        validation_batch_size: Samples per validation batch.
        eval_every: Validate every this many steps as well as at the end; 0 for the end only.
        keep_best: With eval_every, end with the weights of the validation that scored the
            best AUC (accuracy when AUC is undefined) rather than the last step's: with a
            few thousand episodes the network starts memorizing scenes long before the
            last step, and validation (held-out objects) is what says when.
        log_every: Steps between logged (averaged) training metrics.
        shuffle_buffer: Steps shuffled together within a (domain, label) bucket.
    """

    recipe: str = "custom"
    profile: str = "default"
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    dbn: bool = False
    dann: bool = False
    dann_weight: float = 0.1
    scene_weight: float = 0.0
    sim_fraction: float = 0.5
    positive_fraction: float = 0.5
    validation_fraction: float = 0.2
    validation_batch_size: int = 64
    eval_every: int = 0
    keep_best: bool = True
    log_every: int = 10
    shuffle_buffer: int = 1024

    def __post_init__(self) -> None:
        profiles.profile(self.profile)
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 2,
            "learning_rate": self.learning_rate > 0,
            "dann_weight": self.dann_weight >= 0,
            "scene_weight": self.scene_weight >= 0,
            "sim_fraction": 0.0 <= self.sim_fraction <= 1.0,
            "positive_fraction": 0.0 < self.positive_fraction < 1.0,
            "validation_fraction": 0.0 <= self.validation_fraction < 1.0,
            "validation_batch_size": self.validation_batch_size >= 1,
            "eval_every": self.eval_every >= 0,
            "log_every": self.log_every >= 1,
            "shuffle_buffer": self.shuffle_buffer >= 1,
        }
        check_ranges(self, checks)
        if (self.dbn or self.dann) and not 0.0 < self.sim_fraction < 1.0:
            raise ValueError(
                f"dbn and dann need both domains in every batch: sim_fraction="
                f"{self.sim_fraction} must be strictly between 0 and 1"
            )

    @property
    def model_config(self) -> ModelConfig:
        """The network this spec trains."""
        return ModelConfig(
            self.profile, self.dbn, self.dann, self.dann_weight, scene_head=self.scene_weight > 0
        )


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        model: The trained network.
        metrics: Validation metrics at the end (empty without validation data).
        train_metrics: Training metrics averaged over the last logging window.
        steps_per_s: Optimizer steps per second, input pipeline included.
        metadata: What was (or would have been) written beside the export.
        version: The exported version, None when not exported.
        path: The exported version folder, None when not exported.
    """

    model: GraspSuccessModel
    metrics: dict[str, float]
    train_metrics: dict[str, float]
    steps_per_s: float
    metadata: dict = field(default_factory=dict)
    version: int | None = None
    path: Path | None = None


def evaluate(model: GraspSuccessModel, batches: tf.data.Dataset) -> dict[str, float]:
    """Accuracy, AUC and log loss over `batches`, overall and per domain ("real_accuracy", ...).

    Every sample is scored as serving scores it: inference mode, REAL statistics.
    """

    @tf.function
    def predict(batch: dict) -> tf.Tensor:
        serving = {**batch, DOMAIN: tf.fill(tf.shape(batch[DOMAIN]), REAL)}
        return tf.sigmoid(model(serving, training=False)[LOGITS])

    labels, probabilities, domains = [], [], []
    for batch in batches:
        probabilities.append(predict(batch).numpy())
        labels.append(batch[LABEL].numpy())
        domains.append(batch[DOMAIN].numpy())
    if not labels:
        return {}
    label, probability, domain = (np.concatenate(a) for a in (labels, probabilities, domains))
    metrics = scoring.binary_scores(probabilities=probability, labels=label)
    for value, name in samples.DOMAIN_NAMES.items():
        if np.any(domain == value):
            part = domain == value
            metrics.update(
                {
                    f"{name}_{k}": v
                    for k, v in scoring.binary_scores(
                        probabilities=probability[part], labels=label[part]
                    ).items()
                }
            )
    return metrics


def _scene_loss(batch: dict, logits: tf.Tensor) -> tf.Tensor:
    """Pixelwise cross-entropy of the scene head against the masks, on SIM samples only.

    Targets: the share of each feature cell covered by an object in x0's mask
    and by the arm in xt's mask (area-downsampled to the head's resolution).
    """
    targets = tf.concat(
        [
            tf.cast(tf.equal(batch[X0_MASK], common_pb2.MASK_CLASS_OBJECT), tf.float32),
            tf.cast(tf.equal(batch[MASK], common_pb2.MASK_CLASS_ARM), tf.float32),
        ],
        axis=-1,
    )
    targets = tf.image.resize(targets, tf.shape(logits)[1:3], method="area")
    per_sample = tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(targets, logits), axis=[1, 2, 3]
    )
    is_sim = tf.cast(tf.not_equal(batch[DOMAIN], REAL), tf.float32)
    return tf.reduce_sum(per_sample * is_sim) / tf.maximum(tf.reduce_sum(is_sim), 1.0)


def fit(
    model: GraspSuccessModel,
    spec: TrainSpec,
    train_batches: tf.data.Dataset,
    validation_batches: tf.data.Dataset | None = None,
    *,
    log_dir: str | Path | None = None,
    on_progress: ProgressHook | None = None,
    progress_bar: bool = True,
) -> tuple[dict[str, float], dict[str, float], float]:
    """Runs `spec.steps` optimizer steps of `model` over `train_batches`, then validates.

    Args:
        model: A built grasp-success model; trained in place.
        spec: Steps, learning rate, logging and validation cadence.
        train_batches: Endless batches of sample dicts (see `samples.SAMPLE_KEYS`).
        validation_batches: Finite batches scored by `evaluate`; None to skip.
        log_dir: TensorBoard logs go to `<log_dir>/train` and `<log_dir>/validation`.
        on_progress: Called as (step, total, metrics) every `log_every` steps and
            once at the end with the validation metrics prefixed "validation_".
        progress_bar: Show a tqdm bar on stderr.

    Returns:
        (training metrics of the last logging window, validation metrics, steps per second).
        With `spec.keep_best`, the model ends with the best validated weights, the
        validation metrics are theirs, and "best_step" says which step they are from.
    """
    optimizer = keras.optimizers.Adam(spec.learning_rate)
    optimizer.build(model.trainable_variables)
    means = {name: keras.metrics.Mean(name=name) for name in TRAIN_METRICS}

    @tf.function
    def train_step(batch: dict) -> None:
        labels = tf.cast(batch[LABEL], tf.float32)
        with tf.GradientTape() as tape:
            outputs = model(batch, training=True)
            task_loss = tf.reduce_mean(
                tf.nn.sigmoid_cross_entropy_with_logits(labels, outputs[LOGITS])
            )
            domain_loss = tf.constant(0.0)
            if DOMAIN_LOGITS in outputs:
                is_real = tf.cast(tf.equal(batch[DOMAIN], REAL), tf.float32)
                domain_loss = tf.reduce_mean(
                    tf.nn.sigmoid_cross_entropy_with_logits(is_real, outputs[DOMAIN_LOGITS])
                )
            scene_loss = tf.constant(0.0)
            if SCENE_LOGITS in outputs and X0_MASK in batch:
                scene_loss = _scene_loss(batch, outputs[SCENE_LOGITS])
            # The reversal layer makes minimizing the sum adversarial for the shared layers.
            loss = task_loss + domain_loss + spec.scene_weight * scene_loss
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        correct = tf.equal(outputs[LOGITS] > 0, labels > 0.5)
        accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
        values = (loss, task_loss, domain_loss, scene_loss, accuracy)
        for name, value in zip(TRAIN_METRICS, values, strict=True):
            means[name].update_state(value)

    writers = {}
    if log_dir is not None:
        writers = {
            part: tf.summary.create_file_writer(str(Path(log_dir) / part))
            for part in ("train", "validation")
        }

    def log(part: str, step: int, metrics: dict[str, float]) -> None:
        if part in writers:
            with writers[part].as_default(step=step):
                for name, value in metrics.items():
                    tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR)
            writers[part].flush()

    best: dict = {"score": -np.inf, "step": 0, "weights": None, "metrics": {}}

    def validate(step: int) -> dict[str, float]:
        metrics = evaluate(model, validation_batches) if validation_batches is not None else {}
        log("validation", step, metrics)
        score = metrics.get("auc", metrics.get("accuracy"))
        if spec.keep_best and score is not None and score > best["score"]:
            best.update(score=score, step=step, weights=model.get_weights(), metrics=metrics)
        return metrics

    train_metrics: dict[str, float] = {}
    batches = iter(train_batches)
    started = time.perf_counter()
    with tqdm(total=spec.steps, disable=not progress_bar, unit="step", desc=spec.recipe) as bar:
        for step in range(1, spec.steps + 1):
            train_step(next(batches))
            if step == 1:
                # The first step traces the graph; the rate counts the steady state.
                started = time.perf_counter()
            bar.update(1)
            if step % spec.log_every == 0 or step == spec.steps:
                train_metrics = {name: float(m.result()) for name, m in means.items()}
                for metric in means.values():
                    metric.reset_state()
                bar.set_postfix(loss=f"{train_metrics['loss']:.3f}")
                log("train", step, train_metrics)
                if on_progress is not None and step < spec.steps:
                    on_progress(step, spec.steps, train_metrics)
            if spec.eval_every and step % spec.eval_every == 0 and step < spec.steps:
                validate(step)
    steps_per_s = max(spec.steps - 1, 1) / max(time.perf_counter() - started, 1e-9)
    metrics = validate(spec.steps)
    if best["weights"] is not None and best["step"] != spec.steps:
        model.set_weights(best["weights"])
        metrics = dict(best["metrics"])
    if best["weights"] is not None:
        metrics["best_step"] = float(best["step"])
    if on_progress is not None:
        final = {**train_metrics, **{f"validation_{k}": v for k, v in metrics.items()}}
        on_progress(spec.steps, spec.steps, final)
    return train_metrics, metrics, steps_per_s


def train(
    spec: TrainSpec,
    data_root: str | Path,
    train_episodes: Sequence[Summary],
    validation_episodes: Sequence[Summary],
    model_base: str | Path | None,
    *,
    name: str = export.DEFAULT_NAME,
    log_dir: str | Path | None = None,
    on_progress: ProgressHook | None = None,
    progress_bar: bool = True,
    data_selection: dict | None = None,
    initial_weights: str | Path | None = None,
) -> TrainResult:
    """Trains one model on store episodes and publishes it as the next version.

    Args:
        spec: The recipe and loop settings.
        data_root: The episode store's data folder (holding `shards/`).
        train_episodes: Training episodes (unlabeled ones are skipped).
        validation_episodes: Held-out episodes (see `models.episodes.selection.split_episodes`); may be empty.
        model_base: Model repository; the version goes to `<model_base>/<name>/<N>`.
            None trains without exporting.
        name: Model name under model_base.
        log_dir: TensorBoard log folder; None for no logs.
        on_progress: Progress hook, see `fit`.
        progress_bar: Show a tqdm bar.
        data_selection: How the episodes were chosen (e.g. the store filter), for the metadata.
        initial_weights: Start from these weights (a Keras weights file of a model of
            the same spec, e.g. `TrainResult.model.save_weights`): fine-tuning.

    Raises:
        ValueError: no labeled training episodes, mixed image sizes, images
            smaller than the crop, or a batch bucket without episodes.
    """
    train_episodes = labeled(train_episodes)
    validation_episodes = labeled(validation_episodes)
    if not train_episodes:
        raise ValueError("no labeled training episodes: the selection has nothing to learn from")
    height, width = image_size([*train_episodes, *validation_episodes])
    crop = profiles.profile(spec.profile).crop_size
    if crop > min(height, width):
        raise ValueError(
            f"{width}x{height} episodes are smaller than profile {spec.profile!r}'s {crop}px crop"
        )
    keras.utils.set_random_seed(spec.seed)
    model = build_model(spec.model_config)
    if initial_weights is not None:
        model.load_weights(str(initial_weights))
    train_batches = samples.balanced_batches(
        data_root,
        train_episodes,
        batch_size=spec.batch_size,
        crop_size=crop,
        sim_fraction=spec.sim_fraction,
        positive_fraction=spec.positive_fraction,
        seed=spec.seed,
        shuffle_buffer=spec.shuffle_buffer,
        include_masks=spec.scene_weight > 0,
    )
    validation_batches = None
    if validation_episodes:
        validation_batches = samples.validation_batches(
            data_root, validation_episodes, batch_size=spec.validation_batch_size, crop_size=crop
        )
    train_metrics, metrics, steps_per_s = fit(
        model,
        spec,
        train_batches,
        validation_batches,
        log_dir=log_dir,
        on_progress=on_progress,
        progress_bar=progress_bar,
    )
    metadata = {
        "recipe": asdict(spec),
        "initial_weights": str(initial_weights) if initial_weights else None,
        "data": {
            "selection": data_selection or {},
            "train": samples.data_counts(train_episodes),
            "validation": samples.data_counts(validation_episodes),
        },
        "validation_metrics": metrics,
        "training": {"steps_per_s": steps_per_s, "last_train_metrics": train_metrics},
    }
    result = TrainResult(model, metrics, train_metrics, steps_per_s, metadata)
    if model_base is None:
        return result
    version, path = export.export_model(
        model, model_base, name, metadata, image_size=(height, width)
    )
    return TrainResult(model, metrics, train_metrics, steps_per_s, metadata, version, path)
