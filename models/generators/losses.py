"""GraspGAN's and RCAN's losses: LSGAN, pairwise MSE, mask L1 and cross-entropy, task features.

Images are float [-1, 1]; masks are class ids (robots.world's MASK_*); every
loss is a scalar mean over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from models.generators.networks import NUM_MASK_CLASSES


def lsgan_discriminator_loss(real: Sequence[tf.Tensor], fake: Sequence[tf.Tensor]) -> tf.Tensor:
    """Mao et al.'s least-squares D loss, averaged over the scales: (D(real) - 1)^2 + D(fake)^2.

    Args:
        real: Patch score maps of real pairs, one per scale.
        fake: Patch score maps of generated pairs, one per scale.
    """
    per_scale = [
        tf.reduce_mean(tf.square(r - 1.0)) + tf.reduce_mean(tf.square(f))
        for r, f in zip(real, fake, strict=True)
    ]
    return tf.add_n(per_scale) / len(per_scale)


def lsgan_generator_loss(fake: Sequence[tf.Tensor]) -> tf.Tensor:
    """The generator's side, label flipped: (D(fake) - 1)^2, averaged over the scales."""
    return tf.add_n([tf.reduce_mean(tf.square(f - 1.0)) for f in fake]) / len(fake)


def pairwise_mse(generated: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Pairwise mean squared error (Bousmalis et al., PixelDA): MSE minus the squared mean difference.

    It compares differences between pairs of pixels rather than the pixels
    themselves, so a uniform shift of the whole image (a brightness change)
    costs nothing, while moving the arm or an object does. Per image it is the
    variance of `generated - target` over all pixels and channels; TF1's
    `mean_pairwise_squared_error` equals it up to a factor n / (n - 1).
    """
    difference = tf.reshape(generated - target, [tf.shape(generated)[0], -1])
    mean = tf.reduce_mean(difference, axis=1)
    return tf.reduce_mean(tf.reduce_mean(tf.square(difference), axis=1) - tf.square(mean))


def mask_l1(mask_logits: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """GraspGAN's mask loss: L1 between the predicted class probabilities and the one-hot sim mask.

    Args:
        mask_logits: [N, H, W, NUM_MASK_CLASSES] the generator's mask head.
        masks: [N, H, W] integer class ids.

    Returns:
        Mean over pixels of the summed absolute difference (0 perfect, 2 all wrong).
    """
    target = tf.one_hot(tf.cast(masks, tf.int32), NUM_MASK_CLASSES)
    return tf.reduce_mean(tf.reduce_sum(tf.abs(tf.nn.softmax(mask_logits) - target), axis=-1))


def mask_cross_entropy(mask_logits: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Per-pixel softmax cross-entropy against class ids (RCAN's segmentation loss)."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(masks, tf.int32), mask_logits)
    )


def mask_accuracy(mask_logits: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Share of pixels whose argmax class is the true one."""
    predicted = tf.argmax(mask_logits, axis=-1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, tf.cast(masks, tf.int32)), tf.float32))


def feature_loss(generated: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Task-feature loss: MSE between C's last-conv activations on refined and on sim images.

    The sim side is a target, not something to move: its gradient is stopped.
    """
    return tf.reduce_mean(tf.square(generated - tf.stop_gradient(target)))


def binary_cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean sigmoid cross-entropy (the task loss of C)."""
    return tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(labels, tf.float32), logits)
    )
