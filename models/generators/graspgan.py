"""GraspGAN: the models, the losses of the paper's equations (1) and (2), and one training step.

Three networks train together: the generator G (sim -> real-looking images and
masks), the multi-scale patch discriminator D, and the grasp-success network C
(`models.grasp_success.model`). Each step alternates, as the paper does:

  (2) D and C: min  λd L_discr(G, D) + λtd L_task(G, C)       (G fixed)
  (1) G:       min  λg L_gen(G, D) + λtg L_task(G, C) + λc L_content(G)   (D, C fixed)

L_discr and L_gen are LSGAN losses on x0 and xt stacked as 6 channels at 3
scales. L_task is C's binary cross-entropy on refined sim samples with their
sim labels and, when the recipe uses real labels, on real samples (plus C's
DANN domain loss when C has a DANN head). L_content = pmse_weight * PMSE(G(x),
x) + mask_weight * L1(G's mask, sim mask) + feature_weight * ||C_last_conv(G(x))
- C_last_conv(x)||^2, over both x0 and xt. C sees a random crop of its
profile's size, the same for x0 and xt, and the same for refined and sim.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import keras
import tensorflow as tf

from models.episodes.dataset import DOMAIN, LABEL, MASK, X0, X0_MASK, XT
from models.generators import losses
from models.generators.data import to_float, to_pixels
from models.generators.networks import (
    DiscriminatorConfig,
    GeneratorConfig,
    PatchDiscriminator,
    UNetGenerator,
    build_discriminator,
    build_generator,
)
from models.grasp_success.model import (
    DOMAIN_LOGITS,
    LAST_CONV,
    LOGITS,
    GraspSuccessModel,
    ModelConfig,
    build_model,
)
from models.grasp_success.samples import MOTION, REAL, SIM


@dataclass(frozen=True)
class GraspGANConfig:
    """The weights of the paper's equations (1) and (2) and of the content terms.

    The paper names λg, λd, λtg, λtd and λc but does not publish their values;
    these defaults are ours: adversarial terms at 1, the task loss reaching G
    weakly (C is still learning while it steers G), and the three content terms
    at equal weight. A larger pmse_weight keeps G closer to the sim image (at
    10, after 400 steps on 64x64 proxy-real data, G repainted the tray but
    left the arm's colour); at 1 it repaints arm, tray and background too.

    Attributes:
        lambda_g: λg, G's LSGAN loss in (1).
        lambda_d: λd, D's LSGAN loss in (2).
        lambda_tg: λtg, C's task loss on refined sim samples, in (1) (trains G).
        lambda_td: λtd, C's task loss on refined sim and real samples, in (2) (trains C).
        lambda_c: λc, the content-similarity loss in (1).
        pmse_weight: Share of pairwise MSE (refined vs sim image) in L_content.
        mask_weight: Share of the mask L1 loss (G's mask vs the sim mask) in L_content.
        feature_weight: Share of the task-feature loss (C's last conv layer) in L_content.
    """

    lambda_g: float = 1.0
    lambda_d: float = 1.0
    lambda_tg: float = 0.1
    lambda_td: float = 1.0
    lambda_c: float = 1.0
    pmse_weight: float = 1.0
    mask_weight: float = 1.0
    feature_weight: float = 1.0

    def __post_init__(self) -> None:
        for item in fields(self):
            if getattr(self, item.name) < 0:
                raise ValueError(f"GraspGANConfig.{item.name} must not be negative")


@dataclass
class GraspGANModels:
    """G, D and C with their optimizers (G's, and one each for D and C)."""

    generator: UNetGenerator
    discriminator: PatchDiscriminator
    task_model: GraspSuccessModel
    generator_optimizer: keras.optimizers.Optimizer
    discriminator_optimizer: keras.optimizers.Optimizer
    task_optimizer: keras.optimizers.Optimizer


def build_models(
    generator: GeneratorConfig,
    discriminator: DiscriminatorConfig,
    task_model: ModelConfig,
    *,
    generator_lr: float = 2e-4,
    discriminator_lr: float = 2e-4,
    task_lr: float = 1e-3,
    beta_1: float = 0.5,
) -> GraspGANModels:
    """Fresh networks and built Adam optimizers (GAN practice: β1 = 0.5 for G and D)."""
    models = GraspGANModels(
        build_generator(generator),
        build_discriminator(discriminator),
        build_model(task_model),
        keras.optimizers.Adam(generator_lr, beta_1=beta_1),
        keras.optimizers.Adam(discriminator_lr, beta_1=beta_1),
        keras.optimizers.Adam(task_lr),
    )
    models.generator_optimizer.build(models.generator.trainable_variables)
    models.discriminator_optimizer.build(models.discriminator.trainable_variables)
    models.task_optimizer.build(models.task_model.trainable_variables)
    return models


def crop_windows(images: list[tf.Tensor], size: int, seed: tf.Tensor) -> list[tf.Tensor]:
    """One random size x size window, the same for every [B, H, W, 3] tensor in `images`."""
    stacked = tf.concat(images, axis=-1)
    shape = tf.concat([tf.shape(stacked)[:1], [size, size], tf.shape(stacked)[3:]], 0)
    cropped = tf.image.stateless_random_crop(stacked, shape, seed=seed)
    return [cropped[..., 3 * i : 3 * (i + 1)] for i in range(len(images))]


def real_task_samples(
    real: dict, crop_size: int, seed: tf.Tensor, real_labels: bool
) -> tuple[dict, tf.Tensor, tf.Tensor]:
    """Real samples as C sees them beside the refined ones in (2): (batch, labels, weights).

    Every real sample carries its own step's motion, labeled or not: a motion
    no real step has (v = 0) would let C's DANN head tell the domains apart by
    v alone. Real labels count in the task loss only with `real_labels`;
    without, the samples serve DBN and DANN and weigh 0.

    Args:
        real: A `data.real_batches` batch: x0 and xt uint8 [B, H, W, 3],
            motion [B, 5], and label [B] with `real_labels`.
        crop_size: Side of C's square crop.
        seed: The step's crop seed.
        real_labels: Whether real labels count in the task loss.

    Returns:
        ({x0, xt, motion, domain} with float-pixel crops, labels [B], weights [B]).
    """
    x0, xt = crop_windows(
        [tf.cast(real[X0], tf.float32), tf.cast(real[XT], tf.float32)], crop_size, seed
    )
    count = tf.shape(x0)[0]
    batch = {X0: x0, XT: xt, MOTION: real[MOTION], DOMAIN: tf.fill([count], REAL)}
    labels = real[LABEL] if real_labels else tf.zeros([count])
    return batch, labels, tf.fill([count], float(real_labels))


class GraspGANStep:
    """One alternating optimization step, compiled once: `step(sim, real, step_number)`.

    Returns the step's losses and metrics as scalar tensors.
    """

    def __init__(self, models: GraspGANModels, config: GraspGANConfig, real_labels: bool) -> None:
        self.models = models
        self.config = config
        self.real_labels = real_labels
        self.dann = models.task_model.model_config.dann
        self.crop_size = models.task_model.profile.crop_size
        self._compiled = tf.function(self._step)

    def __call__(self, sim: dict, real: dict, step: int) -> dict[str, tf.Tensor]:
        """Runs the compiled step on a sim and a real batch; returns its losses and metrics."""
        return self._compiled(sim, real, tf.constant(step, tf.int64))

    def _task_batch(self, x0: tf.Tensor, xt: tf.Tensor, motion: tf.Tensor, domain: int) -> dict:
        count = tf.shape(x0)[0]
        return {X0: x0, XT: xt, MOTION: motion, DOMAIN: tf.fill([count], domain)}

    def _refine(self, x0: tf.Tensor, xt: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """G on x0 and xt in one call (instance norm keeps samples independent).

        Returns:
            (x0 refined, xt refined, x0 mask logits, xt mask logits).
        """
        images, masks = self.models.generator(tf.concat([x0, xt], axis=0))
        return (*tf.split(images, 2), *tf.split(masks, 2))

    def _discriminate(self, *pairs: tf.Tensor) -> list[list[tf.Tensor]]:
        """D on several batches of 6-channel pairs in one call: per batch, the per-scale maps."""
        outputs = self.models.discriminator(tf.concat(pairs, axis=0))
        per_scale = [tf.split(scores, len(pairs)) for scores in outputs]
        return [[scores[i] for scores in per_scale] for i in range(len(pairs))]

    def _discriminator_and_task(self, sim: dict, real: dict, seed: tf.Tensor) -> dict:
        """Equation (2): D and C learn on refined sim (G fixed) and real samples."""
        m, c = self.models, self.config
        x0_fake, xt_fake, _, _ = self._refine(to_float(sim[X0]), to_float(sim[XT]))
        real_pair = tf.concat([to_float(real[X0]), to_float(real[XT])], axis=-1)
        fake_pair = tf.concat([x0_fake, xt_fake], axis=-1)
        use_real = self.real_labels or self.dann
        with tf.GradientTape() as tape:
            d_real, d_fake = self._discriminate(real_pair, fake_pair)
            discr = losses.lsgan_discriminator_loss(d_real, d_fake)
            x0_c, xt_c = crop_windows(
                [to_pixels(x0_fake), to_pixels(xt_fake)], self.crop_size, seed
            )
            batch = self._task_batch(x0_c, xt_c, sim[MOTION], SIM)
            labels, weights = sim[LABEL], tf.ones_like(sim[LABEL])
            if use_real:
                # Real samples go through C with the refined ones: DBN keeps their statistics
                # apart, and DANN needs both domains in one batch.
                real_batch, real_labels, real_weights = real_task_samples(
                    real, self.crop_size, seed, self.real_labels
                )
                batch = {k: tf.concat([batch[k], real_batch[k]], 0) for k in batch}
                labels = tf.concat([labels, real_labels], 0)
                weights = tf.concat([weights, real_weights], 0)
            outputs = m.task_model(batch, training=True)
            per_sample = tf.nn.sigmoid_cross_entropy_with_logits(labels, outputs[LOGITS])
            task = tf.reduce_sum(per_sample * weights) / tf.reduce_sum(weights)
            domain_loss = tf.constant(0.0)
            if self.dann:
                is_real = tf.cast(tf.equal(batch[DOMAIN], REAL), tf.float32)
                domain_loss = losses.binary_cross_entropy(is_real, outputs[DOMAIN_LOGITS])
            loss = c.lambda_d * discr + c.lambda_td * (task + domain_loss)
        d_vars = m.discriminator.trainable_variables
        c_vars = m.task_model.trainable_variables
        d_grads, c_grads = tape.gradient(loss, [d_vars, c_vars])
        m.discriminator_optimizer.apply_gradients(zip(d_grads, d_vars, strict=True))
        m.task_optimizer.apply_gradients(zip(c_grads, c_vars, strict=True))
        sim_logits = outputs[LOGITS][: tf.shape(sim[LABEL])[0]]
        correct = tf.equal(sim_logits > 0, sim[LABEL] > 0.5)
        return {
            "discriminator_loss": discr,
            "task_loss": task,
            "domain_loss": domain_loss,
            "task_accuracy": tf.reduce_mean(tf.cast(correct, tf.float32)),
            "d_real": tf.add_n([tf.reduce_mean(d) for d in d_real]) / len(d_real),
            "d_fake": tf.add_n([tf.reduce_mean(d) for d in d_fake]) / len(d_fake),
        }

    def _generator(self, sim: dict, seed: tf.Tensor) -> dict:
        """Equation (1): G learns to fool D, help C and keep the sim scene (D, C fixed)."""
        m, c = self.models, self.config
        x0_sim, xt_sim = to_float(sim[X0]), to_float(sim[XT])
        with tf.GradientTape() as tape:
            x0_fake, xt_fake, x0_masks, xt_masks = self._refine(x0_sim, xt_sim)
            (d_fake,) = self._discriminate(tf.concat([x0_fake, xt_fake], axis=-1))
            gen = losses.lsgan_generator_loss(d_fake)
            crops = crop_windows(
                [to_pixels(x) for x in (x0_fake, xt_fake, x0_sim, xt_sim)], self.crop_size, seed
            )
            # Refined and sim samples in one call of C: the same batch statistics for both.
            motion = tf.concat([sim[MOTION], sim[MOTION]], 0)
            both = self._task_batch(
                tf.concat([crops[0], crops[2]], 0), tf.concat([crops[1], crops[3]], 0), motion, SIM
            )
            outputs = m.task_model(both, training=True)
            fake_logits, _ = tf.split(outputs[LOGITS], 2)
            fake_features, sim_features = tf.split(outputs[LAST_CONV], 2)
            task = losses.binary_cross_entropy(sim[LABEL], fake_logits)
            feature = losses.feature_loss(fake_features, sim_features)
            pmse = (losses.pairwise_mse(x0_fake, x0_sim) + losses.pairwise_mse(xt_fake, xt_sim)) / 2
            mask = (
                losses.mask_l1(x0_masks, sim[X0_MASK]) + losses.mask_l1(xt_masks, sim[MASK])
            ) / 2
            content = c.pmse_weight * pmse + c.mask_weight * mask + c.feature_weight * feature
            loss = c.lambda_g * gen + c.lambda_tg * task + c.lambda_c * content
        g_vars = m.generator.trainable_variables
        grads = tape.gradient(loss, g_vars)
        m.generator_optimizer.apply_gradients(zip(grads, g_vars, strict=True))
        return {
            "generator_loss": gen,
            "generator_task_loss": task,
            "content_loss": content,
            "pmse": pmse,
            "mask_l1": mask,
            "feature_loss": feature,
            "mask_accuracy": losses.mask_accuracy(xt_masks, sim[MASK]),
            "generator_total": loss,
        }

    def _step(self, sim: dict, real: dict, step: tf.Tensor) -> dict:
        seed = tf.stack([tf.cast(step, tf.int64), tf.constant(7, tf.int64)])
        metrics = self._discriminator_and_task(sim, real, seed)
        return {**metrics, **self._generator(sim, seed)}
