"""RCAN: a pix2pix-style generator that turns randomized sim images into canonical ones.

The simulator renders, for every randomized image, its canonical version (flat
colours per class, one fixed light: `robots.canonical`) and its mask. G (the
same U-Net as GraspGAN's, with a direct output) learns randomized ->
canonical with an L1 image loss and a per-pixel mask cross-entropy, plus,
optionally, pix2pix's conditional patch-GAN term (D sees the randomized image
stacked with the canonical or generated one as 6 channels). The grasp model is
then trained on canonical images, and an agent configured for RCAN
canonicalizes what its camera sees before planning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
import tensorflow as tf

from models.generators import data, losses
from models.generators.data import CANONICAL, IMAGE, MASK
from models.generators.networks import (
    PatchDiscriminator,
    UNetGenerator,
    build_discriminator,
    build_generator,
    profile_configs,
)
from services.common.config import check_ranges


@dataclass(frozen=True)
class RCANSpec:
    """One RCAN training run.

    Attributes:
        recipe: Name recorded with the model.
        profile: Network profile: tiny, default (64x64 on CPU) or paper.
        steps: Optimizer steps.
        batch_size: (randomized, canonical, mask) triples per step.
        learning_rate: Adam learning rate (β1 = 0.5, as pix2pix).
        seed: Seeds weights and data order.
        image_weight: Weight of the L1 loss between G's image and the canonical one.
        mask_weight: Weight of the mask cross-entropy.
        gan_weight: Weight of pix2pix's conditional LSGAN term; 0 trains no D
            (the target is deterministic, so the regression losses suffice).
        log_every: Steps per averaged metrics window.
        image_every: Steps between TensorBoard image grids (0 for none).
        checkpoint_every: Steps between checkpoints when a checkpoint folder is given.
        shuffle_buffer: Triples shuffled together.
        validation_batch_size: Triples per batch when validating.
    """

    recipe: str = "rcan"
    profile: str = "default"
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 2e-4
    seed: int = 0
    image_weight: float = 10.0
    mask_weight: float = 1.0
    gan_weight: float = 0.0
    log_every: int = 10
    image_every: int = 200
    checkpoint_every: int = 200
    shuffle_buffer: int = 1024
    validation_batch_size: int = 32

    def __post_init__(self) -> None:
        profile_configs(self.profile)
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "image_weight": self.image_weight >= 0,
            "mask_weight": self.mask_weight >= 0,
            "gan_weight": self.gan_weight >= 0,
            "log_every": self.log_every >= 1,
            "image_every": self.image_every >= 0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "shuffle_buffer": self.shuffle_buffer >= 1,
            "validation_batch_size": self.validation_batch_size >= 1,
        }
        check_ranges(self, checks)


@dataclass
class RCANModels:
    """G (direct output), D (None without the GAN term) and their optimizers."""

    generator: UNetGenerator
    discriminator: PatchDiscriminator | None
    generator_optimizer: keras.optimizers.Optimizer
    discriminator_optimizer: keras.optimizers.Optimizer | None

    @classmethod
    def build(cls, spec: RCANSpec) -> RCANModels:
        """Fresh, seeded networks for `spec`, optimizers built."""
        keras.utils.set_random_seed(spec.seed)
        generator_config, discriminator_config = profile_configs(spec.profile)
        generator = build_generator(dataclasses.replace(generator_config, residual=False))
        g_opt = keras.optimizers.Adam(spec.learning_rate, beta_1=0.5)
        g_opt.build(generator.trainable_variables)
        if not spec.gan_weight:
            return cls(generator, None, g_opt, None)
        discriminator = build_discriminator(discriminator_config)
        d_opt = keras.optimizers.Adam(spec.learning_rate, beta_1=0.5)
        d_opt.build(discriminator.trainable_variables)
        return cls(generator, discriminator, g_opt, d_opt)


class RCANStep:
    """One optimization step (D first when there is one), compiled once: `step(batch)`."""

    def __init__(self, models: RCANModels, spec: RCANSpec) -> None:
        self.models = models
        self.spec = spec
        self._compiled = tf.function(self._step)

    def __call__(self, batch: dict) -> dict[str, tf.Tensor]:
        """Runs the compiled step on `batch`; returns its losses and metrics."""
        return self._compiled(batch)

    def _step(self, batch: dict) -> dict[str, tf.Tensor]:
        m, spec = self.models, self.spec
        source, target = data.to_float(batch[IMAGE]), data.to_float(batch[CANONICAL])
        metrics = {}
        if m.discriminator is not None:
            fake = m.generator(source)[0]
            with tf.GradientTape() as tape:
                real_scores = m.discriminator(tf.concat([source, target], -1))
                fake_scores = m.discriminator(tf.concat([source, fake], -1))
                discr = losses.lsgan_discriminator_loss(real_scores, fake_scores)
            d_vars = m.discriminator.trainable_variables
            grads = tape.gradient(discr, d_vars)
            m.discriminator_optimizer.apply_gradients(zip(grads, d_vars, strict=True))
            metrics["discriminator_loss"] = discr
        with tf.GradientTape() as tape:
            images, mask_logits = m.generator(source)
            l1 = tf.reduce_mean(tf.abs(images - target))
            mask = losses.mask_cross_entropy(mask_logits, batch[MASK])
            loss = spec.image_weight * l1 + spec.mask_weight * mask
            if m.discriminator is not None:
                gen = losses.lsgan_generator_loss(m.discriminator(tf.concat([source, images], -1)))
                loss += spec.gan_weight * gen
                metrics["generator_loss"] = gen
        g_vars = m.generator.trainable_variables
        grads = tape.gradient(loss, g_vars)
        m.generator_optimizer.apply_gradients(zip(grads, g_vars, strict=True))
        accuracy = losses.mask_accuracy(mask_logits, batch[MASK])
        return {**metrics, "l1": l1, "mask_loss": mask, "mask_accuracy": accuracy, "loss": loss}
