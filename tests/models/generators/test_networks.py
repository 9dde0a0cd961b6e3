"""The refiner's networks: U-Net shapes at any size, the identity start, D's scales and receptive field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from models.generators import networks
from models.generators.networks import (
    DiscriminatorConfig,
    GeneratorConfig,
    build_discriminator,
    build_generator,
    receptive_field,
)
from robots.world import MASK_ARM, MASK_BACKGROUND, MASK_OBJECT, MASK_TRAY


@pytest.fixture(scope="module")
def tiny_generator():
    return build_generator(GeneratorConfig.tiny())


@pytest.mark.parametrize("size", [(16, 16), (17, 23), (64, 64), (51, 37)])
def test_generator_output_has_the_input_size_and_four_mask_classes(tiny_generator, size):
    images = tf.random.uniform([2, *size, 3], -1.0, 1.0, seed=1)
    refined, mask_logits = tiny_generator(images)
    assert refined.shape == (2, *size, 3)
    assert mask_logits.shape == (2, *size, networks.NUM_MASK_CLASSES)
    assert float(tf.reduce_max(tf.abs(refined))) <= 1.0


def test_mask_classes_are_the_worlds():
    assert networks.NUM_MASK_CLASSES == 4
    assert (MASK_BACKGROUND, MASK_TRAY, MASK_ARM, MASK_OBJECT) == (0, 1, 2, 3)


def test_residual_generator_starts_as_the_identity_and_direct_one_does_not(tiny_generator):
    images = tf.random.uniform([1, 20, 24, 3], -0.99, 0.99, seed=2)
    refined, _ = tiny_generator(images)
    np.testing.assert_allclose(refined.numpy(), images.numpy(), atol=1e-4)
    direct = build_generator(GeneratorConfig.tiny(residual=False))
    assert float(tf.reduce_mean(tf.abs(direct(images)[0] - images))) > 0.05


def test_generator_widths_follow_the_profile():
    config = GeneratorConfig.paper()
    assert [config.filters(level) for level in range(config.depth + 1)] == [
        64,
        128,
        256,
        512,
        512,
        512,
    ]
    tiny = build_generator(GeneratorConfig.tiny())
    default = build_generator(GeneratorConfig.default())
    assert tiny.count_params() < 5_000 < default.count_params()


def test_discriminator_scores_three_scales_of_the_six_channel_pair():
    config = DiscriminatorConfig.tiny()
    discriminator = build_discriminator(config)
    height, width = 37, 50
    outputs = discriminator(tf.zeros([3, height, width, 6]))
    assert len(outputs) == config.scales == 3
    stride = math.prod(config.strides)
    for scale, output in enumerate(outputs):
        # "same" padding: every stride and every halving rounds up.
        h, w = height, width
        for _ in range(scale):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        assert output.shape == (3, math.ceil(h / stride), math.ceil(w / stride), 1)
    with pytest.raises(Exception, match="6|channel|shape|incompatible"):
        discriminator(tf.zeros([1, 32, 32, 3]))


def test_receptive_field_from_the_layer_specs():
    # pix2pix's PatchGAN C64-C128-C256-C512-1 with 4x4 kernels: the paper's 70x70.
    assert DiscriminatorConfig.paper().receptive_field == 70
    assert receptive_field(4, (2, 2, 2, 1, 1)) == 70
    assert DiscriminatorConfig.default().receptive_field == 46
    assert receptive_field(3, (1, 1)) == 5
    assert receptive_field(3, (2, 1)) == 7
    assert len(DiscriminatorConfig.paper().filters) == 5


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        GeneratorConfig(depth=0)
    with pytest.raises(ValueError, match="max_filters"):
        GeneratorConfig(base_filters=32, max_filters=16)
    with pytest.raises(ValueError, match="patch score"):
        DiscriminatorConfig(filters=(8, 8, 8, 8, 2))
    with pytest.raises(ValueError, match="one stride per layer"):
        DiscriminatorConfig(filters=(8, 1), strides=(2,))
    with pytest.raises(ValueError, match="unknown refiner profile"):
        networks.profile_configs("huge")
