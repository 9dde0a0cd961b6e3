"""The grasp-success network C(x0, xt, v), with domain-specific batch norm and a DANN head.

Levine et al.'s architecture as the GraspGAN paper uses it: x0 and xt stacked
as 6 channels go through conv layers (C1), the motion v is embedded by a dense
layer, tiled over the feature map and added, more conv layers follow (C2), then
dense layers and one sigmoid output. Batch norm follows every conv and dense
layer. With DBN the batch norm keeps separate batch and moving statistics for
SIM and REAL samples (gamma and beta shared); with DANN a gradient reversal
layer on C2's last conv output feeds a domain classifier. The network is
resolution-agnostic: between C2 and the dense part sits either a global
average pool or, with the "keypoints" readout, a spatial softmax giving each
channel's expected image position, followed by the motion embedding once more
(profiles.Profile.readout says why).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from models.grasp_success import profiles
from models.grasp_success.samples import DOMAIN, MOTION, REAL, SIM, X0, XT

MOTION_DIM = 5

# Output keys of the training model, declared once.
LOGITS = "logits"
LAST_CONV = "last_conv"
DOMAIN_LOGITS = "domain_logits"
SCENE_LOGITS = "scene_logits"
# Channels of the scene head: objects in x0, the arm in xt.
SCENE_CHANNELS = 2


@dataclass(frozen=True)
class ModelConfig:
    """What a grasp-success network is made of.

    Attributes:
        profile: Name of the layer-size profile (`profiles.PROFILES`).
        dbn: Domain-specific batch norm: SIM and REAL samples get their own statistics.
        dann: Add the domain classifier behind a gradient reversal layer.
        dann_weight: Factor of the reversed gradient reaching the shared layers.
        scene_head: Add a 1x1 conv on C1's output that predicts where the objects
            are in x0 and where the arm is in xt (trained on simulated masks; not
            part of serving).
    """

    profile: str = "default"
    dbn: bool = False
    dann: bool = False
    dann_weight: float = 0.1
    scene_head: bool = False

    def __post_init__(self) -> None:
        profiles.profile(self.profile)
        if self.dann_weight < 0:
            raise ValueError(f"dann_weight={self.dann_weight} must not be negative")


class DomainBatchNorm(keras.layers.Layer):
    """Batch norm with separate batch and moving statistics per domain and shared gamma/beta.

    With `per_domain=False` it is plain batch norm (one set of statistics), so
    naive mixing and DBN mixing differ in nothing else. Statistics are indexed
    0 for SIM (and anything not REAL) and 1 for REAL. A domain absent from a
    training batch keeps its moving statistics unchanged.
    """

    def __init__(
        self, per_domain: bool, momentum: float = 0.9, epsilon: float = 1e-3, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.per_domain = per_domain
        self.momentum = momentum
        self.epsilon = epsilon
        self.num_sets = 2 if per_domain else 1

    def build(self, input_shape) -> None:
        """Creates gamma, beta and the moving statistics: one set per domain, or one for all."""
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")
        stats_shape = (self.num_sets, channels)
        self.moving_mean = self.add_weight(
            shape=stats_shape, initializer="zeros", trainable=False, name="moving_mean"
        )
        self.moving_variance = self.add_weight(
            shape=stats_shape, initializer="ones", trainable=False, name="moving_variance"
        )

    def call(self, inputs: tf.Tensor, domain: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Normalizes each sample with its domain's batch (training) or moving statistics."""
        rank = inputs.shape.rank
        spatial = list(range(1, rank - 1))
        if self.per_domain:
            index = tf.cast(tf.equal(tf.cast(domain, tf.int32), REAL), tf.int32)
        else:
            index = tf.zeros_like(domain, tf.int32)
        sets = tf.one_hot(index, self.num_sets, dtype=inputs.dtype)  # [B, S]

        def per_sample(stats: tf.Tensor) -> tf.Tensor:  # [S, C] -> broadcastable to inputs
            return tf.reshape(tf.matmul(sets, stats), [-1] + [1] * len(spatial) + [stats.shape[-1]])

        if training:
            pixels = tf.cast(tf.reduce_prod(tf.shape(inputs)[1:-1]), inputs.dtype)
            count = tf.reduce_sum(sets, axis=0) * pixels  # [S]
            denominator = tf.maximum(count, 1.0)[:, None]
            sums = tf.reduce_sum(inputs, axis=spatial) if spatial else inputs
            mean = tf.matmul(sets, sums, transpose_a=True) / denominator
            squares = tf.square(inputs - per_sample(mean))
            squares = tf.reduce_sum(squares, axis=spatial) if spatial else squares
            variance = tf.matmul(sets, squares, transpose_a=True) / denominator
            present = (count > 0)[:, None]
            for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                blended = moving * self.momentum + tf.stop_gradient(batch) * (1 - self.momentum)
                moving.assign(tf.where(present, blended, moving))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        scale = self.gamma * tf.math.rsqrt(per_sample(variance) + self.epsilon)
        return (inputs - per_sample(mean)) * scale + self.beta


def reverse_gradient(x: tf.Tensor, weight: float) -> tf.Tensor:
    """Identity forward; the gradient is multiplied by -weight on the way back."""

    @tf.custom_gradient
    def _reverse(value: tf.Tensor):
        return tf.identity(value), lambda upstream: -weight * upstream

    return _reverse(x)


class GradientReversal(keras.layers.Layer):
    """The gradient reversal layer of DANN (Ganin et al.)."""

    def __init__(self, weight: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.weight = weight

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        """The identity; on the way back the gradient is multiplied by -weight."""
        return reverse_gradient(inputs, self.weight)


class _ConvBlock(keras.layers.Layer):
    """Conv (no bias: batch norm follows) -> batch norm -> ReLU -> optional max pool."""

    def __init__(self, spec: profiles.ConvSpec, profile: profiles.Profile, dbn: bool, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(
            spec.filters, spec.kernel, strides=spec.stride, padding="same", use_bias=False
        )
        self.norm = DomainBatchNorm(dbn, profile.bn_momentum, profile.bn_epsilon)
        self.pool = keras.layers.MaxPool2D(spec.pool, padding="same") if spec.pool > 1 else None

    def call(self, inputs: tf.Tensor, domain: tf.Tensor, training: bool = False) -> tf.Tensor:
        x = tf.nn.relu(self.norm(self.conv(inputs), domain, training=training))
        return self.pool(x) if self.pool is not None else x

    def call_with_offsets(
        self, features: tf.Tensor, offsets: tf.Tensor, domain: tf.Tensor
    ) -> tf.Tensor:
        """Inference on `repeat(features, K)` plus one spatially constant offset per copy.

        Equal to `self(tf.repeat(features, K, axis=0) + offsets[:, None, None, :], domain)`
        for features [B, h, w, c] and offsets [B * K, c] (K per row, in row order), at a
        fraction of the cost: the convolution is linear and has no bias, so the features
        are convolved once per row, and the convolution of a constant map is, at each
        output pixel, the kernel taps that fall inside the image (a border sees fewer)
        applied to the offset.
        """
        kernel = self.conv.kernel  # [kh, kw, c_in, c_out]
        kh, kw, c_in, c_out = kernel.shape
        convolved = self.conv(features)  # [B, h', w', c_out]
        # taps[i, j, t] = 1 where kernel tap t falls inside the image at output pixel (i, j):
        # the layer's own convolution (strides, "same" padding) of an all-ones image.
        one_hot_taps = tf.reshape(tf.eye(kh * kw, dtype=features.dtype), [kh, kw, 1, kh * kw])
        taps = tf.nn.conv2d(
            tf.ones_like(features[:1, :, :, :1]), one_hot_taps, self.conv.strides, "SAME"
        )[0]
        shape = tf.shape(convolved)
        per_tap = tf.einsum("nc,tco->nto", offsets, tf.reshape(kernel, [kh * kw, c_in, c_out]))
        per_tap = tf.reshape(per_tap, [shape[0], -1, kh * kw, c_out])  # [B, K, taps, c_out]
        x = convolved[:, None] + tf.einsum("ijt,bkto->bkijo", taps, per_tap)
        x = tf.reshape(x, [-1, shape[1], shape[2], c_out])
        x = tf.nn.relu(self.norm(x, domain, training=False))
        return self.pool(x) if self.pool is not None else x


class _DenseBlock(keras.layers.Layer):
    """Dense (no bias) -> batch norm -> ReLU."""

    def __init__(self, units: int, profile: profiles.Profile, dbn: bool, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units, use_bias=False)
        self.norm = DomainBatchNorm(dbn, profile.bn_momentum, profile.bn_epsilon)

    def call(self, inputs: tf.Tensor, domain: tf.Tensor, training: bool = False) -> tf.Tensor:
        return tf.nn.relu(self.norm(self.dense(inputs), domain, training=training))


class SpatialSoftmax(keras.layers.Layer):
    """Each channel's expected (x, y) position under a softmax over its feature map.

    Returns [B, 2C] coordinates in [-1, 1]; a learned temperature sharpens or
    flattens the softmax.
    """

    def build(self, input_shape) -> None:
        """Creates the learned softmax temperature."""
        self.temperature = self.add_weight(shape=(), initializer="ones", name="temperature")

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        """Each channel's expected (x, y) under the softmax, as [B, 2C] coordinates in [-1, 1]."""
        shape = tf.shape(inputs)
        height, width, channels = shape[1], shape[2], inputs.shape[-1]
        logits = tf.reshape(inputs, [-1, height * width, channels]) / self.temperature
        # The softmax unnormalized, then one matmul for the weighted sums of x, y and 1
        # (the normalizer): a third of the passes over the map of softmax, multiply, sum.
        weights = tf.exp(logits - tf.reduce_max(logits, axis=1, keepdims=True))  # [B, hw, C]
        ys, xs = tf.meshgrid(
            tf.linspace(-1.0, 1.0, height), tf.linspace(-1.0, 1.0, width), indexing="ij"
        )
        xs, ys = tf.reshape(xs, [-1]), tf.reshape(ys, [-1])
        moments = tf.matmul(tf.stack([xs, ys, tf.ones_like(xs)]), weights)  # [B, 3, C]
        return tf.reshape(moments[:, :2] / moments[:, 2:], [-1, 2 * channels])


def normalize_images(images: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] pixels to float32 [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


class GraspSuccessModel(keras.Model):
    """C(x0, xt, v): the probability that moving by v, then closing, grasps an object.

    Called on a batch dict {x0, xt (uint8 crops), motion [B, 5], domain [B]} it
    returns {logits [B], last_conv, domain_logits [B] (with DANN), scene_logits
    [B, h, w, 2] (with the scene head)}.
    `success_probability` scores K motions per image pair, running the image
    trunk once per pair; `image_features` and `score_features` are its two
    halves, for callers that score several sets of motions for the same images.
    """

    def __init__(self, config: ModelConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_config = config
        self.profile = profiles.profile(config.profile)
        p, dbn = self.profile, config.dbn
        self.trunk = [_ConvBlock(s, p, dbn, name=f"c1_conv{i}") for i, s in enumerate(p.trunk)]
        self.motion_embedding = _DenseBlock(p.motion_units, p, dbn, name="motion")
        self.head = [_ConvBlock(s, p, dbn, name=f"c2_conv{i}") for i, s in enumerate(p.head)]
        if self.profile.readout == "keypoints":
            self.pool = SpatialSoftmax(name="keypoints")
        else:
            self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = [_DenseBlock(u, p, dbn, name=f"fc{i}") for i, u in enumerate(p.dense_units)]
        self.output_layer = keras.layers.Dense(1, name="success_logit")
        if config.scene_head:
            self.scene = keras.layers.Conv2D(SCENE_CHANNELS, 1, name="scene_logits")
        if config.dann:
            self.reversal = GradientReversal(config.dann_weight)
            self.domain_classifier = keras.Sequential(
                [keras.layers.GlobalAveragePooling2D()]
                + [keras.layers.Dense(u, activation="relu") for u in p.domain_units]
                + [keras.layers.Dense(1)],
                name="domain_classifier",
            )

    def image_features(
        self, x0: tf.Tensor, xt: tf.Tensor, domain: tf.Tensor, training: bool = False
    ) -> tf.Tensor:
        """C1 over the 6-channel stack of the cropped uint8 images: [B, h, w, c]."""
        x = tf.concat([normalize_images(x0), normalize_images(xt)], axis=-1)
        for block in self.trunk:
            x = block(x, domain, training=training)
        return x

    def score(
        self, features: tf.Tensor, motion: tf.Tensor, domain: tf.Tensor, training: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The motion merge and C2: (success logits [N], last conv output [N, h', w', c'])."""
        embedded = self.motion_embedding(tf.cast(motion, tf.float32), domain, training=training)
        x = features + embedded[:, None, None, :]
        for block in self.head:
            x = block(x, domain, training=training)
        return self._readout(x, embedded, domain, training), x

    def _readout(
        self, last_conv: tf.Tensor, embedded: tf.Tensor, domain: tf.Tensor, training: bool
    ) -> tf.Tensor:
        """C2's last feature map (and the motion embedding) to success logits [N]."""
        x = self.pool(last_conv)
        if self.profile.readout == "keypoints":
            x = tf.concat([x, embedded], axis=-1)
        for block in self.dense:
            x = block(x, domain, training=training)
        return tf.squeeze(self.output_layer(x), axis=-1)

    def call(self, inputs: dict, training: bool = False) -> dict:
        """Scores a batch dict; returns the logits and the heads the config turns on."""
        domain = tf.cast(inputs[DOMAIN], tf.int32)
        features = self.image_features(inputs[X0], inputs[XT], domain, training=training)
        logits, last_conv = self.score(features, inputs[MOTION], domain, training=training)
        outputs = {LOGITS: logits, LAST_CONV: last_conv}
        if self.model_config.scene_head:
            outputs[SCENE_LOGITS] = self.scene(features)
        if self.model_config.dann:
            reversed_features = self.reversal(last_conv)
            outputs[DOMAIN_LOGITS] = tf.squeeze(
                self.domain_classifier(reversed_features, training=training), axis=-1
            )
        return outputs

    def success_probability(
        self, x0: tf.Tensor, xt: tf.Tensor, motions: tf.Tensor, domain: int = REAL
    ) -> tf.Tensor:
        """P(success) [B, K] of K candidate motions [B, K, 5] per cropped image pair.

        Inference mode; statistics of `domain` (REAL, as in serving). C1 runs
        once per pair (`image_features`), C2 once per motion (`score_features`).
        """
        features = self.image_features(x0, xt, tf.fill([tf.shape(x0)[0]], domain), training=False)
        return self.score_features(features, motions, domain)

    def score_features(
        self, features: tf.Tensor, motions: tf.Tensor, domain: int = REAL
    ) -> tf.Tensor:
        """P(success) [B, K] of K motions [B, K, 5] per pair's C1 features [B, h, w, c].

        The second half of `success_probability`, so a caller that scores several
        sets of motions for the same images (CEM's iterations) runs C1 once. It
        computes what `score` does in inference mode, but convolves the features
        for C2's first layer once per pair rather than once per motion
        (`_ConvBlock.call_with_offsets`): with the default profile's two C2
        layers, that halves the convolutions of scoring K motions.
        """
        batch, k = tf.shape(motions)[0], tf.shape(motions)[1]
        domains = tf.fill([batch * k], domain)
        embedded = self.motion_embedding(
            tf.reshape(tf.cast(motions, tf.float32), [-1, MOTION_DIM]), domains, training=False
        )
        x = self.head[0].call_with_offsets(features, embedded, domains)
        for block in self.head[1:]:
            x = block(x, domains, training=False)
        logits = self._readout(x, embedded, domains, training=False)
        return tf.reshape(tf.sigmoid(logits), [batch, k])


def build_model(config: ModelConfig) -> GraspSuccessModel:
    """A grasp-success network with its variables created (on a tiny dummy batch)."""
    model = GraspSuccessModel(config)
    size = model.profile.crop_size
    # The layers are resolution-agnostic, so a small dummy batch creates every variable.
    side = min(size, 64)
    model(
        {
            X0: tf.zeros([2, side, side, 3], tf.uint8),
            XT: tf.zeros([2, side, side, 3], tf.uint8),
            MOTION: tf.zeros([2, MOTION_DIM]),
            DOMAIN: tf.constant([SIM, REAL], tf.int32),
        },
        training=False,
    )
    return model
