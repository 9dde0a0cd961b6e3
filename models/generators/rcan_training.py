"""Training RCAN from episode-store data and publishing its generator (kind "rcan").

`train_rcan` is the whole job, shaped like the grasp model's `training.train`:
(randomized, canonical, mask) triples of SIM episodes collected with canonical
renders, the loop, TensorBoard scalars and image grids (randomized | G's
canonical | simulator's canonical | G's mask), optional checkpoints,
validation on held-out episodes, and the export of G.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from graspfleet.v1 import episode_store_pb2
from models.episodes.dataset import image_size
from models.generators import data, export
from models.generators.data import CANONICAL, IMAGE
from models.generators.loop import GeneratorRun, LoopSettings, ProgressHook, run_loop, run_metadata
from models.generators.rcan import RCANModels, RCANSpec, RCANStep
from models.generators.scores import evaluate_rcan
from models.generators.summaries import Checkpoints, TrainingLog, colorize_masks, image_grid

Summary = episode_store_pb2.EpisodeSummary


RCANResult = GeneratorRun[RCANModels]


def fit_rcan(
    models: RCANModels,
    spec: RCANSpec,
    batches: tf.data.Dataset,
    *,
    log_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    on_progress: ProgressHook | None = None,
    progress_bar: bool = True,
) -> tuple[dict[str, float], float]:
    """Runs spec.steps RCAN steps over endless {image, canonical, mask} batches.

    Args:
        models: Built networks and optimizers; trained in place.
        spec: Steps, loss weights, cadence.
        batches: uint8 images [B, H, W, 3], canonical [B, H, W, 3], mask [B, H, W]
            (`data.rcan_batches`, or any such dataset).
        log_dir: TensorBoard logs; None for none.
        checkpoint_dir: Resume from and save checkpoints here; None for none.
        on_progress: Called as (step, total, metrics) per logging window.
        progress_bar: Show a tqdm bar.

    Returns:
        (losses of the last logging window, steady-state steps per second).
    """
    step_fn = RCANStep(models, spec)
    iterator = iter(batches)
    log = TrainingLog(log_dir)
    preview = next(iterator)

    def images(step: int) -> None:
        shown = preview[IMAGE][:4]
        canonical, logits = models.generator(data.to_float(shown))
        grid = image_grid(
            [
                shown,
                export.to_uint8(canonical),
                preview[CANONICAL][:4],
                colorize_masks(tf.argmax(logits, axis=-1)),
            ]
        )
        log.images(step, "randomized | canonical (G) | canonical (sim) | mask", grid)

    objects = {"generator": models.generator, "generator_optimizer": models.generator_optimizer}
    if models.discriminator is not None:
        objects |= {
            "discriminator": models.discriminator,
            "discriminator_optimizer": models.discriminator_optimizer,
        }
    settings = LoopSettings(
        spec.recipe,
        spec.steps,
        spec.log_every,
        spec.image_every,
        spec.checkpoint_every,
        progress_bar,
    )
    return run_loop(
        settings,
        lambda step: step_fn(next(iterator)),
        images_fn=images,
        log=log,
        checkpoints=Checkpoints(checkpoint_dir, **objects),
        on_progress=on_progress,
    )


def train_rcan(
    spec: RCANSpec,
    data_root: str | Path,
    train_episodes: Sequence[Summary],
    validation_episodes: Sequence[Summary],
    model_base: str | Path | None,
    *,
    name: str = export.DEFAULT_NAMES[export.KIND_RCAN],
    log_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    on_progress: ProgressHook | None = None,
    progress_bar: bool = True,
    data_selection: dict | None = None,
) -> RCANResult:
    """Trains RCAN's generator on store episodes and publishes it as the next version of `name`.

    Args:
        spec: The run's settings.
        data_root: The episode store's data folder (holding `shards/`).
        train_episodes: Episodes collected with canonical renders; their SIM
            ones are used (labels do not matter).
        validation_episodes: Held-out episodes scored by `evaluate_rcan`; may be empty.
        model_base: Model repository; None trains without exporting.
        name: Model name under model_base.
        log_dir: TensorBoard log folder; None for no logs.
        checkpoint_dir: Checkpoints to resume a killed run from; None for none.
        on_progress: Progress hook (step, total, metrics).
        progress_bar: Show a tqdm bar.
        data_selection: How the episodes were chosen, for the metadata.

    Raises:
        ValueError: no SIM episodes, or several image sizes.
    """
    height, width = image_size(train_episodes)
    models = RCANModels.build(spec)
    batches = data.rcan_batches(
        data_root,
        train_episodes,
        batch_size=spec.batch_size,
        seed=spec.seed,
        shuffle_buffer=spec.shuffle_buffer,
    )
    train_metrics, steps_per_s = fit_rcan(
        models,
        spec,
        batches,
        log_dir=log_dir,
        checkpoint_dir=checkpoint_dir,
        on_progress=on_progress,
        progress_bar=progress_bar,
    )
    metrics: dict[str, float] = {}
    held_out = [e for e in validation_episodes if e.domain == data.SIM]
    if held_out:
        samples = data.rcan_samples(data_root, held_out).batch(spec.validation_batch_size)
        metrics = evaluate_rcan(models.generator, samples)
        TrainingLog(log_dir).scalars(spec.steps, metrics, part="validation")
    metadata = run_metadata(
        spec,
        data_selection,
        train_episodes,
        validation_episodes,
        steps_per_s,
        train_metrics,
        metrics,
    )
    path = None
    if model_base is not None:
        path = export.export_generator(
            models.generator, model_base, name, export.KIND_RCAN, (height, width), metadata
        )
    return RCANResult(models, metrics, train_metrics, steps_per_s, metadata, path)
