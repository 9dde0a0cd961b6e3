"""The grasp-success network: both profiles, the K-motion path, DBN statistics, gradient reversal."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.grasp_success import export, profiles
from models.grasp_success.model import (
    DOMAIN_LOGITS,
    LAST_CONV,
    LOGITS,
    DomainBatchNorm,
    ModelConfig,
    SpatialSoftmax,
    build_model,
    reverse_gradient,
)
from models.grasp_success.samples import DOMAIN, MOTION, REAL, SIM, X0, XT, center_crop


def _images(rng: np.random.Generator, batch: int, size: int) -> tf.Tensor:
    return tf.constant(rng.integers(0, 256, (batch, size, size, 3)), tf.uint8)


def _batch(rng: np.random.Generator, domains: list[int], size: int = 56) -> dict:
    return {
        X0: _images(rng, len(domains), size),
        XT: _images(rng, len(domains), size),
        MOTION: tf.constant(rng.normal(size=(len(domains), 5)), tf.float32),
        DOMAIN: tf.constant(domains, tf.int32),
    }


@pytest.fixture(scope="module")
def dann_model():
    keras.utils.set_random_seed(0)
    return build_model(ModelConfig(dbn=True, dann=True, dann_weight=0.3))


def test_both_profiles_build_with_their_layer_counts():
    default = build_model(ModelConfig())
    outputs = default(_batch(np.random.default_rng(0), [SIM, REAL]), training=False)
    assert outputs[LOGITS].shape == (2,) and DOMAIN_LOGITS not in outputs
    paper = build_model(ModelConfig(profile="paper", dbn=True, dann=True))
    # Fig. 4c of the paper: C1 has 7 conv layers and C2 has 9, 64 filters each (Levine et al.).
    assert (len(paper.trunk), len(paper.head)) == (7, 9)
    assert {block.conv.filters for block in paper.trunk + paper.head} == {64}
    assert [layer.units for layer in paper.domain_classifier.layers[1:]] == [100, 100, 1]
    assert profiles.PAPER.crop_size == 472 and profiles.PAPER.image_width == 640
    assert 5 * default.count_params() < paper.count_params() < 2_000_000


def test_k_motions_share_one_trunk_pass_and_match_per_motion_calls(dann_model):
    rng = np.random.default_rng(1)
    batch, k = 3, 5
    pairs = _batch(rng, [REAL] * batch)
    motions = tf.constant(rng.normal(size=(batch, k, 5)), tf.float32)
    together = dann_model.success_probability(pairs[X0], pairs[XT], motions).numpy()
    one_by_one = np.stack(
        [
            tf.sigmoid(dann_model({**pairs, MOTION: motions[:, i]}, training=False)[LOGITS])
            for i in range(k)
        ],
        axis=1,
    )
    assert together.shape == (batch, k)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_serving_signature_crops_raw_images_and_answers_b_by_k(dann_model):
    rng = np.random.default_rng(2)
    module = export.ServingModule(dann_model)
    x0, xt = _images(rng, 2, 64), _images(rng, 2, 64)
    motions = tf.constant(rng.normal(size=(2, 7, 5)), tf.float32)
    probability = module.serve(x0, xt, motions)[export.OUTPUT_SUCCESS].numpy()
    assert probability.shape == (2, 7) and probability.dtype == np.float32
    assert np.all((probability >= 0) & (probability <= 1))
    expected = dann_model.success_probability(center_crop(x0, 56), center_crop(xt, 56), motions)
    np.testing.assert_allclose(probability, expected, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="smaller than the 56px crop"):
        module.serve(_images(rng, 1, 40), _images(rng, 1, 40), motions[:1])


def test_spatial_softmax_finds_each_channels_hot_spot():
    height, width = 7, 9
    maps = np.zeros((1, height, width, 2), np.float32)
    maps[0, 1, 6, 0] = 50.0  # channel 0: row 1, column 6
    maps[0, 5, 0, 1] = 50.0  # channel 1: row 5, column 0
    keypoints = SpatialSoftmax()(tf.constant(maps)).numpy()[0]
    xs, ys = np.linspace(-1, 1, width), np.linspace(-1, 1, height)
    # (x of every channel, then y of every channel), in [-1, 1]
    np.testing.assert_allclose(keypoints, [xs[6], xs[0], ys[1], ys[5]], atol=1e-4)


def test_keypoints_readout_scores_k_motions_like_one_by_one():
    keras.utils.set_random_seed(3)
    model = build_model(ModelConfig(profile="default"))
    rng = np.random.default_rng(4)
    pairs = _batch(rng, [REAL, REAL])
    motions = tf.constant(rng.normal(size=(2, 4, 5)), tf.float32)
    together = model.success_probability(pairs[X0], pairs[XT], motions).numpy()
    one_by_one = np.stack(
        [
            tf.sigmoid(model({**pairs, MOTION: motions[:, i]}, training=False)[LOGITS])
            for i in range(4)
        ],
        axis=1,
    )
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    # Different motions get different scores: the readout sees v, not only the images.
    assert np.ptp(together, axis=1).min() > 0


def test_dbn_normalizes_each_domain_with_its_own_statistics():
    rng = np.random.default_rng(3)
    layer = DomainBatchNorm(per_domain=True, momentum=0.5, epsilon=1e-6)
    sim = tf.constant(rng.normal(5.0, 2.0, (6, 4, 4, 3)), tf.float32)
    real = tf.constant(rng.normal(-3.0, 0.5, (4, 4, 4, 3)), tf.float32)
    layer(sim, tf.fill([6], SIM), training=True)  # builds and sees SIM only
    moving_mean, moving_variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    np.testing.assert_array_equal(moving_mean[1], 0.0)  # REAL untouched by a SIM-only batch
    np.testing.assert_array_equal(moving_variance[1], 1.0)
    np.testing.assert_allclose(moving_mean[0], 0.5 * sim.numpy().mean(axis=(0, 1, 2)), rtol=1e-5)

    mixed = layer(tf.concat([sim, real], 0), tf.constant([SIM] * 6 + [REAL] * 4), training=True)
    alone = layer(sim, tf.fill([6], SIM), training=True)
    np.testing.assert_allclose(mixed[:6], alone, atol=1e-5)  # SIM rows ignore the REAL rows
    real_part = mixed[6:].numpy()
    np.testing.assert_allclose(real_part.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(real_part.std(axis=(0, 1, 2)), 1.0, atol=1e-3)

    shared = DomainBatchNorm(per_domain=False)  # naive mixing: one set of statistics
    pooled = shared(tf.concat([sim, real], 0), tf.constant([SIM] * 6 + [REAL] * 4), training=True)
    assert np.abs(pooled[6:].numpy().mean()) > 0.5

    served = layer(real, tf.fill([4], REAL), training=False).numpy()
    mean, variance = layer.moving_mean.numpy()[1], layer.moving_variance.numpy()[1]
    np.testing.assert_allclose(served, (real - mean) / np.sqrt(variance + 1e-6), atol=1e-4)


def test_model_trained_on_sim_only_batches_keeps_real_statistics_for_serving():
    keras.utils.set_random_seed(4)
    model = build_model(ModelConfig(dbn=True))
    rng = np.random.default_rng(4)
    for _ in range(3):
        model(_batch(rng, [SIM] * 4), training=True)
    stats = [v for v in model.non_trainable_variables if "moving_" in v.path]
    assert stats and all(np.any(v.numpy()[0] != v.numpy()[1]) for v in stats)
    for v in stats:
        expected = 0.0 if v.path.endswith("moving_mean") else 1.0
        np.testing.assert_array_equal(v.numpy()[1], expected)

    pairs = _batch(rng, [REAL] * 2)
    motions = tf.constant(rng.normal(size=(2, 3, 5)), tf.float32)
    before = model.success_probability(pairs[X0], pairs[XT], motions).numpy()
    for v in stats:  # scramble SIM statistics: serving must not notice
        v.assign(tf.tensor_scatter_nd_update(v, [[0]], v[:1] * 3.0 + 1.0))
    after_sim = model.success_probability(pairs[X0], pairs[XT], motions).numpy()
    np.testing.assert_array_equal(before, after_sim)
    for v in stats:
        v.assign(tf.tensor_scatter_nd_update(v, [[1]], v[1:] * 3.0 + 1.0))
    after_real = model.success_probability(pairs[X0], pairs[XT], motions).numpy()
    assert np.abs(after_real - before).max() > 1e-4


def test_gradient_reversal_flips_and_scales_the_gradient(dann_model):
    x = tf.constant([[1.0, -2.0, 3.0]])
    weights = tf.constant([[0.5, 2.0, -1.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = reverse_gradient(x, 0.3)
        loss = tf.reduce_sum(y * weights)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_allclose(tape.gradient(loss, x), -0.3 * weights.numpy(), rtol=1e-6)

    # In the model: the domain loss reaches the shared layers reversed and scaled.
    batch = _batch(np.random.default_rng(5), [SIM, SIM, REAL, REAL])
    shared = dann_model.trunk[0].conv.kernel
    with tf.GradientTape(persistent=True) as tape:
        last_conv = dann_model(batch, training=True)[LAST_CONV]
        through_reversal = tf.reduce_sum(
            dann_model.domain_classifier(dann_model.reversal(last_conv))
        )
        direct = tf.reduce_sum(dann_model.domain_classifier(last_conv))
    reversed_gradient = tape.gradient(through_reversal, shared)
    direct_gradient = tape.gradient(direct, shared)
    assert np.abs(direct_gradient.numpy()).max() > 0
    np.testing.assert_allclose(reversed_gradient, -0.3 * direct_gradient.numpy(), atol=1e-6)
