"""How well predicted masks match the simulator's: accuracy and per-class IoU over many batches."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from services.refiner.networks import NUM_MASK_CLASSES

# Names of the mask classes, in class-id order (robots.world's MASK_*).
MASK_NAMES = ("background", "tray", "arm", "object")


class MaskConfusion:
    """A confusion matrix of mask classes, accumulated batch by batch."""

    def __init__(self) -> None:
        self.matrix = np.zeros((NUM_MASK_CLASSES, NUM_MASK_CLASSES), np.int64)

    def add(self, truth: tf.Tensor, predicted: tf.Tensor) -> None:
        """Counts pixels of integer class-id maps of any (equal) shape."""
        self.matrix += tf.math.confusion_matrix(
            tf.reshape(tf.cast(truth, tf.int32), [-1]),
            tf.reshape(tf.cast(predicted, tf.int32), [-1]),
            NUM_MASK_CLASSES,
            dtype=tf.int64,
        ).numpy()

    def metrics(self) -> dict[str, float]:
        """mask_accuracy and mask_iou_<class> for every class present; empty before any pixel."""
        total = self.matrix.sum()
        if not total:
            return {}
        metrics = {"mask_accuracy": float(np.trace(self.matrix) / total)}
        for index, name in enumerate(MASK_NAMES):
            hits = self.matrix[index, index]
            union = self.matrix[index, :].sum() + self.matrix[:, index].sum() - hits
            if union:
                metrics[f"mask_iou_{name}"] = float(hits / union)
        return metrics
