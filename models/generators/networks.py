"""The refiner's networks: GraspGAN's U-Net generator G and its multi-scale patch discriminator D.

G (Fig. 4b of the GraspGAN paper) is a U-Net with average pooling on the way
down, bilinear upsampling on the way up, skips joined by concatenation and a
1x1 convolution, and instance norm after every convolution. Besides the image
it predicts a segmentation mask (background, tray, arm, object: the world's
mask classes), whose loss forces it to keep the scene's semantics. G is fully
convolutional and size-agnostic: each upsampling resizes to the exact size of
its skip, so any H x W in gives H x W out. RCAN's randomized-to-canonical
translator is the same network with a direct (non-residual) output.

D is a patch discriminator of 5 convolutions (4x4 kernels, LeakyReLU, instance
norm inside); at the paper profile its receptive field is 70x70. One D, with
shared weights, scores x0 and xt stacked as 6 channels at 3 scales (full, 1/2,
1/4), giving one patch map per scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from robots.world import MASK_ARM, MASK_BACKGROUND, MASK_OBJECT, MASK_TRAY

NUM_MASK_CLASSES = len((MASK_BACKGROUND, MASK_TRAY, MASK_ARM, MASK_OBJECT))
# atanh of this bounds the residual generator's input away from +-1 (atanh(1) is infinite).
_RESIDUAL_CLIP = 0.999


@dataclass(frozen=True)
class GeneratorConfig:
    """The U-Net generator's sizes.

    Attributes:
        name: Profile name, recorded with exported models.
        base_filters: Channels at full resolution; doubled at each level down.
        max_filters: Cap on the channels of the deeper levels.
        depth: Average-pooling steps (levels below full resolution).
        convs_per_level: 3x3 convolutions (instance norm, ReLU) per level, each way.
        residual: The image head predicts a change to the input (in atanh space,
            initialised to zero, so an untrained G is the identity). GraspGAN
            refines an image that is already almost right; RCAN's output is a
            different picture, so its G is not residual.
        norm_epsilon: Variance epsilon of the instance norm.
    """

    name: str = "default"
    base_filters: int = 16
    max_filters: int = 128
    depth: int = 3
    convs_per_level: int = 2
    residual: bool = True
    norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        if min(self.base_filters, self.max_filters, self.depth, self.convs_per_level) < 1:
            raise ValueError(f"{self}: filters, depth and convs_per_level must be at least 1")
        if self.max_filters < self.base_filters:
            raise ValueError(f"{self}: max_filters must be at least base_filters")

    @classmethod
    def tiny(cls, **overrides) -> GeneratorConfig:
        """A few hundred weights: builds and trains in well under a second (tests)."""
        return cls(
            **{
                "name": "tiny",
                "base_filters": 4,
                "max_filters": 8,
                "depth": 2,
                "convs_per_level": 1,
                **overrides,
            }
        )

    @classmethod
    def default(cls, **overrides) -> GeneratorConfig:
        """64x64 images on a 2-core CPU."""
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides) -> GeneratorConfig:
        """472x472 crops, Fig. 4b's widths (n64 at full resolution, up to 512)."""
        return cls(
            **{"name": "paper", "base_filters": 64, "max_filters": 512, "depth": 5, **overrides}
        )

    def filters(self, level: int) -> int:
        """Channels at `level` (0 is full resolution)."""
        return min(self.base_filters * 2**level, self.max_filters)


def instance_norm(epsilon: float, name: str | None = None) -> keras.layers.Layer:
    """Instance norm (Ulyanov et al.): group norm with one group per channel."""
    return keras.layers.GroupNormalization(groups=-1, epsilon=epsilon, name=name)


class _ConvNormRelu(keras.layers.Layer):
    """Conv (no bias: the norm removes it) -> instance norm -> ReLU."""

    def __init__(self, filters: int, kernel: int, epsilon: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False)
        self.norm = instance_norm(epsilon)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(self.norm(self.conv(inputs)))


class UNetGenerator(keras.Model):
    """G(x) -> (x_refined, mask_logits) for float images in [-1, 1] of any size.

    Called on [N, H, W, 3] it returns (images [N, H, W, 3] in [-1, 1],
    mask_logits [N, H, W, NUM_MASK_CLASSES]).
    """

    def __init__(self, config: GeneratorConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.generator_config = config
        c, eps = config, config.norm_epsilon
        self.down = [self._level(c, c.filters(lvl), f"down{lvl}") for lvl in range(c.depth)]
        self.pool = keras.layers.AveragePooling2D(2, padding="same")
        self.bottom = self._level(c, c.filters(c.depth), "bottom")
        self.skips = [
            _ConvNormRelu(c.filters(lvl), 1, eps, name=f"skip{lvl}") for lvl in range(c.depth)
        ]
        self.up = [self._level(c, c.filters(lvl), f"up{lvl}") for lvl in range(c.depth)]
        # Zero-initialised in residual mode so that training starts from the identity.
        initializer = "zeros" if c.residual else "glorot_uniform"
        self.image_head = keras.layers.Conv2D(3, 1, kernel_initializer=initializer, name="image")
        self.mask_head = keras.layers.Conv2D(NUM_MASK_CLASSES, 1, name="mask")

    @staticmethod
    def _level(config: GeneratorConfig, filters: int, name: str) -> keras.Sequential:
        # Sequential, not nested lists: Keras tracks the variables of a flat list of layers only.
        blocks = [
            _ConvNormRelu(filters, 3, config.norm_epsilon, name=f"{name}_{i}")
            for i in range(config.convs_per_level)
        ]
        return keras.Sequential(blocks, name=name)

    def call(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Refines `images`; returns (refined images, mask logits)."""
        x = images
        skips = []
        for level in self.down:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for lvl in reversed(range(len(skips))):
            skip = skips[lvl]
            # Resizing to the skip's own size (not x2) keeps odd sizes exact.
            x = tf.image.resize(x, tf.shape(skip)[1:3], method="bilinear")
            x = self.skips[lvl](tf.concat([x, skip], axis=-1))
            x = self.up[lvl](x)
        delta = self.image_head(x)
        if self.generator_config.residual:
            base = tf.atanh(tf.clip_by_value(images, -_RESIDUAL_CLIP, _RESIDUAL_CLIP))
            refined = tf.tanh(base + delta)
        else:
            refined = tf.tanh(delta)
        return refined, self.mask_head(x)


def build_generator(config: GeneratorConfig | None = None) -> UNetGenerator:
    """A generator with its variables created (on a tiny dummy batch)."""
    generator = UNetGenerator(config or GeneratorConfig())
    side = 2**generator.generator_config.depth
    generator(tf.zeros([1, side, side, 3]))
    return generator


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The patch discriminator's 5 convolutions, input to output.

    Attributes:
        name: Profile name.
        filters: Output channels per layer; the last is 1 (the patch score).
        strides: Stride per layer.
        kernel: Square kernel side of every layer (4 in the paper's D).
        scales: Image scales scored (full, 1/2, 1/4, ...), sharing one D.
        leak: Slope of the LeakyReLU after every layer but the last.
        norm_epsilon: Variance epsilon of the instance norm (layers 2 to 4).
    """

    name: str = "default"
    filters: tuple[int, ...] = (32, 64, 64, 64, 1)
    strides: tuple[int, ...] = (2, 2, 1, 1, 1)
    kernel: int = 4
    scales: int = 3
    leak: float = 0.2
    norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        if len(self.filters) != len(self.strides) or not self.filters:
            raise ValueError(f"{self}: one stride per layer")
        if self.filters[-1] != 1:
            raise ValueError(f"{self}: the last layer outputs the patch score (1 filter)")
        if min(*self.filters, *self.strides, self.kernel, self.scales) < 1:
            raise ValueError(f"{self}: filters, strides, kernel and scales must be positive")

    @classmethod
    def tiny(cls, **overrides) -> DiscriminatorConfig:
        """Tests: a handful of filters."""
        return cls(**{"name": "tiny", "filters": (4, 8, 8, 8, 1), **overrides})

    @classmethod
    def default(cls, **overrides) -> DiscriminatorConfig:
        """64x64 images on a CPU: narrow layers, 46x46 patches (70 would cover the whole image)."""
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides) -> DiscriminatorConfig:
        """pix2pix's 70x70 PatchGAN (C64-C128-C256-C512-1), as the paper's D."""
        return cls(
            **{
                "name": "paper",
                "filters": (64, 128, 256, 512, 1),
                "strides": (2, 2, 2, 1, 1),
                **overrides,
            }
        )

    @property
    def receptive_field(self) -> int:
        """Side of the input window one patch score sees, pixels (at full scale)."""
        return receptive_field(self.kernel, self.strides)


def receptive_field(kernel: int, strides: tuple[int, ...]) -> int:
    """Receptive field of a stack of square convolutions, computed from the output back."""
    field = 1
    for stride in reversed(strides):
        field = (field - 1) * stride + kernel
    return field


class PatchDiscriminator(keras.Model):
    """D(x0, xt): LSGAN patch scores of an image pair at several scales.

    Called on [N, H, W, 6] (x0 and xt in [-1, 1], stacked) it returns a list of
    `scales` score maps [N, h_s, w_s, 1], full scale first.
    """

    def __init__(self, config: DiscriminatorConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.discriminator_config = config
        last = len(config.filters) - 1
        self.convs = [
            keras.layers.Conv2D(f, config.kernel, strides=s, padding="same", name=f"conv{i}")
            for i, (f, s) in enumerate(zip(config.filters, config.strides, strict=True))
        ]
        # pix2pix: no norm on the first layer (it would erase the input's colour statistics)
        # nor on the score layer.
        self.norms = [instance_norm(config.norm_epsilon, name=f"norm{i}") for i in range(1, last)]
        self.downscale = keras.layers.AveragePooling2D(2, padding="same")

    def score(self, pair: tf.Tensor) -> tf.Tensor:
        """The patch map of one scale."""
        x = pair
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if 0 < i < last:
                x = self.norms[i - 1](x)
            if i < last:
                x = tf.nn.leaky_relu(x, self.discriminator_config.leak)
        return x

    def call(self, pair: tf.Tensor) -> list[tf.Tensor]:
        """The patch score maps of `pair` at each scale, full scale first."""
        outputs = []
        x = pair
        for scale in range(self.discriminator_config.scales):
            if scale:
                x = self.downscale(x)
            outputs.append(self.score(x))
        return outputs


def build_discriminator(config: DiscriminatorConfig | None = None) -> PatchDiscriminator:
    """A discriminator with its variables created (on a tiny dummy batch)."""
    discriminator = PatchDiscriminator(config or DiscriminatorConfig())
    discriminator(tf.zeros([1, 16, 16, 6]))
    return discriminator


def profile_configs(name: str) -> tuple[GeneratorConfig, DiscriminatorConfig]:
    """The (generator, discriminator) configs of a named profile: tiny, default or paper.

    Raises:
        ValueError: no profile has that name.
    """
    if name not in ("tiny", "default", "paper"):
        raise ValueError(f"unknown refiner profile {name!r}; choose tiny, default or paper")
    return getattr(GeneratorConfig, name)(), getattr(DiscriminatorConfig, name)()
