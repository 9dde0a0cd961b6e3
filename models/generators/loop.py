"""The training loop GraspGAN and RCAN share: steps, logging windows, images, checkpoints, progress."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import tensorflow as tf
from tqdm import tqdm

from graspfleet.v1 import episode_store_pb2
from models.generators import data
from models.generators.summaries import Checkpoints, RunningMeans, TrainingLog

ProgressHook = Callable[[int, int, dict[str, float]], None]
Models = TypeVar("Models")


@dataclass(frozen=True)
class GeneratorRun(Generic[Models]):
    """What a GraspGAN or RCAN run produced.

    Attributes:
        models: The trained networks and their optimizers.
        metrics: Validation metrics on held-out sim episodes (scene preservation for
            GraspGAN, `scores.evaluate_rcan` for RCAN); empty without validation data.
        train_metrics: Losses averaged over the last logging window.
        steps_per_s: Steady-state steps per second, input pipeline included.
        metadata: What was (or would have been) written beside the export.
        path: The exported version folder; None when not exported.
    """

    models: Models
    metrics: dict[str, float]
    train_metrics: dict[str, float]
    steps_per_s: float
    metadata: dict = field(default_factory=dict)
    path: Path | None = None


@dataclass(frozen=True)
class LoopSettings:
    """How often the loop reports.

    Attributes:
        name: Shown on the progress bar.
        steps: Total steps of the run (a resumed run counts the steps already done).
        log_every: Steps per averaged metrics window (TensorBoard and progress hook).
        image_every: Steps between TensorBoard image grids; 0 for none.
        checkpoint_every: Steps between checkpoints; 0 for the end only.
        progress_bar: Show a tqdm bar on stderr.
    """

    name: str
    steps: int
    log_every: int = 10
    image_every: int = 100
    checkpoint_every: int = 0
    progress_bar: bool = True


def run_loop(
    settings: LoopSettings,
    step_fn: Callable[[int], dict[str, tf.Tensor]],
    *,
    images_fn: Callable[[int], None] | None = None,
    log: TrainingLog,
    checkpoints: Checkpoints,
    on_progress: ProgressHook | None = None,
) -> tuple[dict[str, float], float]:
    """Runs `step_fn(step)` for steps restored + 1 .. settings.steps.

    Args:
        settings: Steps and reporting cadence.
        step_fn: One optimization step; returns its scalar metrics.
        images_fn: Writes image summaries for a step (called every image_every steps).
        log: Where scalars go (`train` part).
        checkpoints: Restored before the first step, saved on cadence and at the end.
        on_progress: Called as (step, total, window metrics) after each logging window.

    Returns:
        (metrics of the last logging window, steady-state steps per second).
    """
    start = checkpoints.restore()
    means = RunningMeans()
    window: dict[str, float] = {}
    timed_from, timed_steps = time.perf_counter(), 0
    remaining = max(settings.steps - start, 0)
    with tqdm(
        total=remaining, disable=not settings.progress_bar, unit="step", desc=settings.name
    ) as bar:
        for step in range(start + 1, settings.steps + 1):
            means.add(step_fn(step))
            if step == start + 1:
                # The first step traces the graphs; the rate counts the steady state.
                timed_from, timed_steps = time.perf_counter(), 0
            else:
                timed_steps += 1
            bar.update(1)
            if step % settings.log_every == 0 or step == settings.steps:
                window = means.take()
                log.scalars(step, window)
                if on_progress is not None:
                    on_progress(step, settings.steps, window)
            if (
                images_fn is not None
                and settings.image_every
                and (step % settings.image_every == 0 or step == settings.steps)
            ):
                images_fn(step)
            if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                checkpoints.save(step)
    rate = timed_steps / max(time.perf_counter() - timed_from, 1e-9)
    if remaining:
        checkpoints.save(settings.steps)
    return window, rate


def run_metadata(
    spec,
    data_selection: dict | None,
    train_episodes: Sequence[episode_store_pb2.EpisodeSummary],
    validation_episodes: Sequence[episode_store_pb2.EpisodeSummary],
    steps_per_s: float,
    train_metrics: dict[str, float],
    validation_metrics: dict[str, float],
) -> dict:
    """What a generator run writes beside its export: the spec, the data, the numbers."""
    return {
        "recipe": asdict(spec),
        "data": {
            "selection": data_selection or {},
            "train": data.episode_counts(train_episodes),
            "validation": data.episode_counts(validation_episodes),
        },
        "training": {
            "steps_per_s": steps_per_s,
            "last_train_metrics": train_metrics,
            "validation_metrics": validation_metrics,
        },
    }
