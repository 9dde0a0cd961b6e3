"""What refiner training writes as it goes: TensorBoard scalars and image grids, and checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from robots.canonical import PALETTE


def colorize_masks(masks: tf.Tensor) -> tf.Tensor:
    """Class ids [N, H, W] to uint8 RGB [N, H, W, 3] in the canonical palette."""
    return tf.gather(tf.constant(PALETTE), tf.cast(masks, tf.int32))


def image_grid(columns: list[tf.Tensor]) -> tf.Tensor:
    """One uint8 picture per sample: the columns [N, H, W, 3] side by side, a 2-px gap between.

    Returns:
        [N, H, len(columns) * (W + 2) - 2, 3] uint8.
    """
    gap = tf.fill(tf.concat([tf.shape(columns[0])[:2], [2, 3]], 0), tf.constant(255, tf.uint8))
    parts = []
    for index, column in enumerate(columns):
        if index:
            parts.append(gap)
        parts.append(tf.cast(column, tf.uint8))
    return tf.concat(parts, axis=2)


class RunningMeans:
    """Means of named scalars over a logging window."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: Mapping[str, tf.Tensor | float]) -> None:
        """Adds one value per name to the window."""
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
            self._counts[name] = self._counts.get(name, 0) + 1

    def take(self) -> dict[str, float]:
        """The window's means; starts a new window."""
        means = {name: total / self._counts[name] for name, total in self._sums.items()}
        self._sums, self._counts = {}, {}
        return means


class TrainingLog:
    """TensorBoard logs under `<log_dir>/train` (scalars, images) and `<log_dir>/validation`.

    With `log_dir=None` every call does nothing, so loops need no conditionals.
    """

    def __init__(self, log_dir: str | Path | None) -> None:
        self._log_dir = None if log_dir is None else Path(log_dir)
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def _writer(self, part: str) -> tf.summary.SummaryWriter | None:
        # Created on first use, so that a log used for one part leaves no empty files in another.
        if self._log_dir is None:
            return None
        if part not in self._writers:
            self._writers[part] = tf.summary.create_file_writer(str(self._log_dir / part))
        return self._writers[part]

    def scalars(self, step: int, metrics: Mapping[str, float], part: str = "train") -> None:
        """Writes `metrics` at `step` to the `part` log, skipping values that are not finite."""
        writer = self._writer(part)
        if writer is None:
            return
        with writer.as_default(step=step):
            for name, value in metrics.items():
                if np.isfinite(value):
                    tf.summary.scalar(name, value)
        writer.flush()

    def images(self, step: int, name: str, grid: tf.Tensor, max_outputs: int = 4) -> None:
        """Writes an image grid at `step` to the training log."""
        writer = self._writer("train")
        if writer is None:
            return
        with writer.as_default(step=step):
            tf.summary.image(name, grid, max_outputs=max_outputs)
        writer.flush()


class Checkpoints:
    """Resumable training state: `restore()` at start, `save(step)` every so often.

    With `directory=None` nothing is saved and `restore()` returns 0.
    """

    def __init__(self, directory: str | Path | None, max_to_keep: int = 2, **objects) -> None:
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._manager = None
        if directory is not None:
            checkpoint = tf.train.Checkpoint(step=self.step, **objects)
            self._manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep)

    def restore(self) -> int:
        """Loads the latest checkpoint, if any; returns the step it was taken after (0 if none)."""
        if self._manager is None or self._manager.latest_checkpoint is None:
            return 0
        self._manager.checkpoint.restore(self._manager.latest_checkpoint).expect_partial()
        return int(self.step.numpy())

    def save(self, step: int) -> None:
        """Saves the training state as of `step` (nothing without a directory)."""
        if self._manager is not None:
            self.step.assign(step)
            self._manager.save(checkpoint_number=step)
