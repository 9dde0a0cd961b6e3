"""The validation gate: AUC on held-out real samples, and the publish verdict."""

from __future__ import annotations

import numpy as np
import pytest

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.grasp_success.export import OUTPUT_SUCCESS
from services.episode_store import client
from services.trainer.job import gate


def _real_episodes(store) -> list[episode_store_pb2.EpisodeSummary]:
    channel, stub = client.connect(store.address)
    with channel:
        flt = episode_store_pb2.EpisodeFilter(domain=common_pb2.DOMAIN_REAL)
        return [e for e in client.list_all(stub, flt) if e.label.state]


def _constant(probability: float):
    def serve(x0, xt, motions):
        return {OUTPUT_SUCCESS: np.full([len(x0), 1], probability, np.float32)}

    return serve


def test_the_gate_scores_the_ranking_not_a_threshold(store):
    episodes = _real_episodes(store)
    data_root = store.config.data_dir
    successes = {e.episode_id for e in episodes if e.label.success}
    # A constant ranks nothing, whatever its level: 0.5.
    for level in (0.1, 0.9):
        score, samples = gate.serving_auc(_constant(level), data_root, episodes)
        assert samples > 0 and score == pytest.approx(0.5)
    # Every probability below 0.5 (an accuracy threshold would call it useless, 0.5),
    # but successes ranked above failures: a perfect AUC.
    truth = gate.serving_auc(_oracle(successes, data_root, episodes), data_root, episodes)[0]
    assert truth == pytest.approx(1.0)
    # With one class only nothing can be ranked.
    failures = [e for e in episodes if not e.label.success]
    assert gate.serving_auc(_constant(0.1), data_root, failures)[0] is None


def _oracle(successes: set[str], data_root, episodes):
    """A serving function that knows each step's label (by its x0 bytes): 0.3 on successes,
    0.1 on failures."""
    from models.episodes.dataset import LABEL, X0
    from models.episodes.selection import labeled
    from models.grasp_success.samples import step_samples

    known = {}
    for batch in step_samples(data_root, labeled(episodes)).batch(256):
        for x0, label in zip(batch[X0].numpy(), batch[LABEL].numpy(), strict=True):
            known[x0.tobytes()] = float(label)

    def serve(x0, xt, motions):
        rows = [0.3 if known[image.tobytes()] > 0.5 else 0.1 for image in np.asarray(x0)]
        return {OUTPUT_SUCCESS: np.asarray(rows, np.float32)[:, None]}

    return serve


def test_decide_publishes_within_the_allowed_regression_only():
    first = gate.decide(0.6, None, None, 40, enabled=True, max_regression=0.02)
    assert first.passed and "no stable version" in first.message
    worse = gate.decide(0.6, 0.7, 3, 40, enabled=True, max_regression=0.02)
    assert not worse.passed and "not published" in worse.message
    close = gate.decide(0.69, 0.7, 3, 40, enabled=True, max_regression=0.02)
    assert close.passed and close.metrics["stable_version"] == 3.0
    one_class = gate.decide(None, 0.7, 3, 40, enabled=True, max_regression=0.02)
    assert one_class.passed and "one class only" in one_class.message
