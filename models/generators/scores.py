"""How well generators keep the scene: mask accuracy and IoU against the simulator's, image errors."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models.episodes.dataset import MASK, X0, X0_MASK, XT
from models.generators import data, export, losses
from models.generators.data import CANONICAL, IMAGE
from models.generators.networks import NUM_MASK_CLASSES, UNetGenerator

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


def scene_metrics(generator: UNetGenerator, batches: tf.data.Dataset) -> dict[str, float]:
    """How well refined images keep the sim scene, over finite {x0, xt, x0_mask, mask} batches.

    Returns:
        mask_accuracy and mask_iou_<class> of G's masks against the sim masks
        (where G puts the tray, arm and objects), pmse (refined vs sim, in
        [-1, 1] units) and mean_abs_change (pixels, 0-255). Empty with no batches.
    """
    confusion = MaskConfusion()
    pmse, change, count = 0.0, 0.0, 0

    @tf.function
    def refine(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        refined, logits = generator(data.to_float(images))
        return refined, tf.argmax(logits, axis=-1, output_type=tf.int32)

    for batch in batches:
        for image_key, mask_key in ((X0, X0_MASK), (XT, MASK)):
            refined, predicted = refine(batch[image_key])
            confusion.add(batch[mask_key], predicted)
            size = int(tf.shape(refined)[0])
            source = data.to_float(batch[image_key])
            pmse += float(losses.pairwise_mse(refined, source)) * size
            change += float(tf.reduce_mean(tf.abs(refined - source))) * 127.5 * size
            count += size
    if not count:
        return {}
    return {
        **confusion.metrics(),
        "pmse": pmse / count,
        "mean_abs_change": change / count,
    }


def evaluate_rcan(generator: UNetGenerator, batches: tf.data.Dataset) -> dict[str, float]:
    """How close G's canonical images and masks are to the simulator's, over finite batches.

    Returns:
        l1_pixels (mean absolute error, 0-255), psnr (dB), mask_accuracy and
        mask_iou_<class>. Empty with no batches.
    """
    confusion = MaskConfusion()
    l1, psnr, count = 0.0, 0.0, 0

    @tf.function
    def canonicalize(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        canonical, logits = generator(data.to_float(images))
        return export.to_uint8(canonical), tf.argmax(logits, axis=-1, output_type=tf.int32)

    for batch in batches:
        canonical, predicted = canonicalize(batch[IMAGE])
        confusion.add(batch[MASK], predicted)
        size = int(tf.shape(canonical)[0])
        error = tf.abs(tf.cast(canonical, tf.float32) - tf.cast(batch[CANONICAL], tf.float32))
        l1 += float(tf.reduce_mean(error)) * size
        psnr += float(tf.reduce_sum(tf.image.psnr(canonical, batch[CANONICAL], max_val=255)))
        count += size
    if not count:
        return {}
    return {**confusion.metrics(), "l1_pixels": l1 / count, "psnr": psnr / count}
