"""GraspGAN: its losses, its data from the store, and a few real training steps that export G."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from graspfleet.v1 import common_pb2, episode_store_pb2
from models import registry
from models.episodes.dataset import DOMAIN, LABEL, MASK, X0, X0_MASK, XT
from models.episodes.shards import pose_vector
from models.episodes.synthetic import sample_episode
from models.generators import data, export, losses
from models.generators.graspgan import GraspGANConfig, real_task_samples
from models.generators.graspgan_training import GraspGANSpec, train_graspgan
from models.grasp_success.samples import MOTION, REAL, SIM, grasp_motion
from services.common.images import decode_image
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server


def test_lsgan_losses_are_zero_at_their_targets_and_positive_elsewhere():
    ones, zeros = [tf.ones([2, 4, 4, 1])] * 3, [tf.zeros([2, 2, 2, 1])] * 3
    assert float(losses.lsgan_discriminator_loss(ones, zeros)) == 0.0
    assert float(losses.lsgan_generator_loss(ones)) == 0.0
    # A confused D (0.5 everywhere) pays 0.25 per term; the generator pays 0.25.
    half = [tf.fill([2, 4, 4, 1], 0.5)] * 3
    assert float(losses.lsgan_discriminator_loss(half, half)) == pytest.approx(0.5)
    assert float(losses.lsgan_generator_loss(zeros)) == pytest.approx(1.0)


def test_pairwise_mse_ignores_a_uniform_shift_but_not_a_moved_object():
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(-0.5, 0.5, (2, 16, 16, 3)), tf.float32)
    assert float(losses.pairwise_mse(image + 0.3, image)) == pytest.approx(0.0, abs=1e-6)
    other = tf.constant(rng.uniform(-0.5, 0.5, (2, 16, 16, 3)), tf.float32)
    assert float(losses.pairwise_mse(other + 0.3, image)) == pytest.approx(
        float(losses.pairwise_mse(other, image)), rel=1e-4
    )
    moved = tf.roll(image, shift=4, axis=2)
    assert float(losses.pairwise_mse(moved, image)) > 0.05
    # Plain MSE would charge the shift: PMSE is MSE minus the squared mean difference.
    difference = (moved + 0.3 - image).numpy().reshape(2, -1)
    expected = np.mean(np.mean(difference**2, 1) - np.mean(difference, 1) ** 2)
    assert float(losses.pairwise_mse(moved + 0.3, image)) == pytest.approx(expected, rel=1e-4)


def test_mask_losses_reward_the_right_classes():
    masks = tf.constant([[[0, 1], [2, 3]]], tf.uint8)
    right = tf.one_hot(tf.cast(masks, tf.int32), 4) * 50.0
    wrong = tf.one_hot((tf.cast(masks, tf.int32) + 1) % 4, 4) * 50.0
    assert float(losses.mask_l1(right, masks)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.mask_l1(wrong, masks)) == pytest.approx(2.0, abs=1e-6)
    assert float(losses.mask_cross_entropy(right, masks)) < 1e-6
    assert float(losses.mask_accuracy(wrong, masks)) == 0.0


def test_feature_loss_moves_only_the_refined_side():
    refined, sim = tf.Variable([[1.0, 2.0]]), tf.Variable([[0.0, 0.0]])
    with tf.GradientTape() as tape:
        loss = losses.feature_loss(refined, sim)
    grad_refined, grad_sim = tape.gradient(loss, [refined, sim])
    assert float(loss) == pytest.approx(2.5)
    np.testing.assert_allclose(grad_refined.numpy(), [[1.0, 2.0]])
    assert grad_sim is None


def test_sim_and_real_batches_from_the_store(refiner_store):
    data_root, summaries = refiner_store
    sim = next(iter(data.sim_batches(data_root, summaries, batch_size=4)))
    assert sim[X0].shape == sim[XT].shape == (4, 64, 64, 3) and sim[X0].dtype == tf.uint8
    assert sim[X0_MASK].shape == sim[MASK].shape == (4, 64, 64)
    assert set(np.unique(sim[MASK].numpy())) <= {0, 1, 2, 3}
    assert sim[MOTION].shape == (4, 5) and set(sim[DOMAIN].numpy()) == {SIM}
    unlabeled = next(iter(data.real_batches(data_root, summaries, batch_size=4, with_labels=False)))
    assert set(unlabeled) == {X0, XT, MOTION} and unlabeled[MOTION].shape == (4, 5)
    labeled = next(iter(data.real_batches(data_root, summaries, batch_size=4, with_labels=True)))
    assert {MOTION, LABEL, DOMAIN} <= set(labeled)
    sims_only = [e for e in summaries if e.domain == common_pb2.DOMAIN_SIM]
    with pytest.raises(ValueError, match="no REAL episodes"):
        data.real_batches(data_root, sims_only, batch_size=4, with_labels=False)
    failures = [e for e in sims_only if not e.label.success]
    with pytest.raises(ValueError, match="no labeled sim/success"):
        data.sim_batches(data_root, failures, batch_size=4)


def test_unlabeled_real_samples_reach_c_with_their_episodes_motions(tmp_path):
    """Without real labels, C still sees each real step's own motion, never v = 0."""
    store = create_server(EpisodeStoreConfig(port=0, data_dir=str(tmp_path), grace_s=0))
    expected = {}  # (x0, xt) pixels -> v from the poses GetEpisode returns
    try:
        channel, stub = client.connect(store.address)
        with channel:
            for seed in range(3):
                record = sample_episode(seed, domain=REAL, num_steps=3, with_masks=False)
                record.outcome.result = common_pb2.GRASP_RESULT_ABORTED  # stored unlabeled
                client.write_episode(stub, record)
            summaries = list(client.list_all(stub))
            for summary in summaries:
                stored = stub.GetEpisode(
                    episode_store_pb2.GetEpisodeRequest(
                        episode_id=summary.episode_id, include_steps=True
                    )
                )
                x0 = decode_image(stored.header.x0).tobytes()
                final_pose = pose_vector(stored.outcome.final_pose)
                for step in stored.steps:
                    motion = grasp_motion(pose_vector(step.pose), final_pose).numpy()
                    expected[(x0, decode_image(step.image).tobytes())] = motion
    finally:
        store.stop(grace_s=0)
    assert all(e.label.state == common_pb2.LABEL_STATE_UNLABELED for e in summaries)
    assert len(expected) == 9 and not any(np.allclose(v, 0) for v in expected.values())

    real = next(iter(data.real_batches(tmp_path, summaries, batch_size=9, with_labels=False)))
    batch, labels, weights = real_task_samples(
        real, crop_size=48, seed=tf.constant([0, 1], tf.int64), real_labels=False
    )
    seen = [
        (x0.tobytes(), xt.tobytes())
        for x0, xt in zip(real[X0].numpy(), real[XT].numpy(), strict=True)
    ]
    assert sorted(seen) == sorted(expected)  # every step once
    np.testing.assert_allclose(real[MOTION].numpy(), [expected[k] for k in seen], atol=1e-5)
    np.testing.assert_array_equal(batch[MOTION].numpy(), real[MOTION].numpy())
    assert batch[X0].shape == batch[XT].shape == (9, 48, 48, 3)
    assert set(batch[DOMAIN].numpy()) == {REAL}
    # Unlabeled samples serve DBN and DANN only: their placeholder labels weigh nothing.
    assert not weights.numpy().any() and labels.shape == (9,)


def test_a_few_graspgan_steps_train_all_three_networks_and_export_g(refiner_store, tmp_path):
    data_root, summaries = refiner_store
    train, validation = summaries[:12], summaries[12:]
    spec = GraspGANSpec(
        profile="tiny",
        steps=24,
        batch_size=4,
        generator_lr=1e-2,
        dbn=True,
        dann=True,
        log_every=4,
        image_every=12,
        losses=GraspGANConfig(mask_weight=5.0),
    )
    windows = []
    result = train_graspgan(
        spec,
        data_root,
        train,
        validation,
        tmp_path / "models",
        log_dir=tmp_path / "logs",
        on_progress=lambda step, total, metrics: windows.append(metrics),
        progress_bar=False,
    )
    assert len(windows) == 6
    for metrics in windows:
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        assert metrics["discriminator_loss"] > 0 and metrics["generator_loss"] > 0
        assert metrics["task_loss"] > 0 and metrics["pmse"] >= 0 and metrics["mask_l1"] >= 0
    assert windows[-1]["content_loss"] < 0.8 * windows[0]["content_loss"]
    # G moved away from the identity it starts as, D and C learned too.
    assert windows[-1]["pmse"] > 0
    assert result.metrics["mask_accuracy"] > windows[0]["mask_accuracy"]
    assert {"mask_iou_tray", "pmse", "mean_abs_change"} <= set(result.metrics)

    metadata = json.loads((result.path / registry.METADATA_FILE).read_text())
    assert metadata["kind"] == export.KIND_GRASPGAN and metadata["image_size"] == [64, 64]
    assert metadata["recipe"]["losses"]["mask_weight"] == 5.0
    assert metadata["training"]["validation_metrics"] == result.metrics
    assert metadata["data"]["train"]["real_episodes"] == 6
    signature = tf.saved_model.load(str(result.path)).signatures[export.SIGNATURE_KEY]
    outputs = signature(images=tf.zeros([1, 64, 64, 3], tf.uint8))
    assert outputs[export.OUTPUT_IMAGES].shape == (1, 64, 64, 3)
    events = list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 10_000  # scalars and image grids


def test_specs_are_validated_and_read_from_json():
    assert GraspGANSpec(losses={"lambda_c": 2.0}).losses == GraspGANConfig(lambda_c=2.0)
    with pytest.raises(ValueError, match="batch_size"):
        GraspGANSpec(batch_size=1)
    with pytest.raises(ValueError, match="must not be negative"):
        GraspGANConfig(lambda_g=-1.0)
    with pytest.raises(ValueError, match="unknown refiner profile"):
        GraspGANSpec(profile="huge")


def test_mixed_image_sizes_and_small_images_are_clear_errors(refiner_store, tmp_path):
    data_root, summaries = refiner_store
    odd = common_pb2.ImageSize(width=32, height=32)
    small = [type(summaries[0])(image_size=odd, domain=common_pb2.DOMAIN_SIM)]
    with pytest.raises(ValueError, match="several image sizes"):
        train_graspgan(GraspGANSpec(), data_root, [*summaries, *small], [], None)
    with pytest.raises(ValueError, match="smaller than C's 56px crop"):
        train_graspgan(GraspGANSpec(), data_root, small, [], None)
