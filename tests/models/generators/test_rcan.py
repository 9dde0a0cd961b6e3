"""RCAN: randomized -> canonical triples from the store, a few training steps, resume, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from models import registry
from models.generators import data, export
from models.generators.data import CANONICAL, IMAGE, MASK
from models.generators.loop import LoopSettings, run_loop
from models.generators.rcan import RCANModels, RCANSpec
from models.generators.rcan_training import train_rcan
from models.generators.summaries import Checkpoints, TrainingLog
from robots import canonical
from tests.models.generators.conftest import RCAN_EPISODES, STEPS_PER_EPISODE


def _with_canonical(summaries):
    return [e for e in summaries if e.episode_id != f"rcan-{RCAN_EPISODES}"]


def test_triples_hold_every_step_and_each_x0_once(rcan_store):
    data_root, summaries = rcan_store
    episodes = _with_canonical(summaries)
    triples = list(data.rcan_samples(data_root, episodes))
    steps = sum(e.num_steps for e in episodes)
    assert len(triples) == steps + len(episodes)
    for triple in triples:
        assert triple[IMAGE].shape == triple[CANONICAL].shape == (64, 64, 3)
        assert triple[MASK].shape == (64, 64) and triple[MASK].dtype == tf.uint8
        # The canonical image shows the mask's classes in their palette colours.
        np.testing.assert_array_equal(
            canonical.classes_of(triple[CANONICAL].numpy()), triple[MASK].numpy()
        )
    assert all(e.num_steps <= STEPS_PER_EPISODE for e in episodes)


def test_an_episode_without_canonical_images_is_named(rcan_store):
    data_root, summaries = rcan_store
    with pytest.raises(tf.errors.InvalidArgumentError, match="render_canonical"):
        list(data.rcan_samples(data_root, summaries))


def test_a_few_rcan_steps_learn_the_canonical_look_and_export(rcan_store, tmp_path):
    data_root, summaries = rcan_store
    episodes = _with_canonical(summaries)
    spec = RCANSpec(
        profile="tiny", steps=30, batch_size=4, learning_rate=1e-2, gan_weight=0.5, log_every=5
    )
    windows = []
    result = train_rcan(
        spec,
        data_root,
        episodes[:3],
        episodes[3:],
        tmp_path / "models",
        log_dir=tmp_path / "logs",
        on_progress=lambda step, total, metrics: windows.append(metrics),
        progress_bar=False,
    )
    assert len(windows) == 6
    for metrics in windows:
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        assert metrics["discriminator_loss"] > 0 and metrics["generator_loss"] > 0
    assert windows[-1]["l1"] < 0.7 * windows[0]["l1"]
    assert windows[-1]["mask_loss"] < windows[0]["mask_loss"]
    assert result.metrics["mask_accuracy"] > 0.4 and result.metrics["l1_pixels"] < 100
    metadata = json.loads((result.path / registry.METADATA_FILE).read_text())
    assert metadata["kind"] == export.KIND_RCAN and metadata["generator"]["residual"] is False
    assert metadata["training"]["validation_metrics"] == result.metrics
    signature = tf.saved_model.load(str(result.path)).signatures[export.SIGNATURE_KEY]
    outputs = signature(images=tf.zeros([2, 40, 56, 3], tf.uint8))
    assert outputs[export.OUTPUT_IMAGES].shape == (2, 40, 56, 3)
    assert outputs[export.OUTPUT_MASKS].shape == (2, 40, 56)


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path):
    """The loop both trainers share: weights and optimizer state come back, steps continue."""
    images = tf.random.uniform([2, 16, 16, 3], -1.0, 1.0, seed=3)

    def run(steps: int, on_progress) -> RCANModels:
        models = RCANModels.build(RCANSpec(profile="tiny"))
        generator, optimizer = models.generator, models.generator_optimizer

        def step(_: int) -> dict:  # eager: no graph to trace
            with tf.GradientTape() as tape:
                refined, mask_logits = generator(images)
                loss = tf.reduce_mean(tf.square(refined - images)) + tf.reduce_mean(mask_logits**2)
            variables = generator.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return {"loss": loss}

        checkpoints = Checkpoints(tmp_path / "ckpt", generator=generator, optimizer=optimizer)
        settings = LoopSettings("resume", steps, log_every=1, image_every=0, progress_bar=False)
        run_loop(
            settings, step, log=TrainingLog(None), checkpoints=checkpoints, on_progress=on_progress
        )
        return models

    first_steps, later_steps = [], []
    first = run(3, lambda step, total, metrics: first_steps.append(step))
    saved = [v.numpy() for v in first.generator.weights]
    resumed = run(5, lambda step, total, metrics: later_steps.append(step))
    assert first_steps == [1, 2, 3] and later_steps == [4, 5]
    assert int(resumed.generator_optimizer.iterations.numpy()) == 5
    fresh = RCANModels.build(RCANSpec(profile="tiny", seed=1))
    assert not all(
        np.array_equal(a, b.numpy()) for a, b in zip(saved, fresh.generator.weights, strict=True)
    )
    # A finished run resumes to nothing: no step runs again.
    again = []
    run(5, lambda step, total, metrics: again.append(step))
    assert again == []


def test_specs_are_validated():
    with pytest.raises(ValueError, match="learning_rate"):
        RCANSpec(learning_rate=0)
    assert RCANModels.build(RCANSpec(profile="tiny")).discriminator is None
