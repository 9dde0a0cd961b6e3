"""The validation gate: balanced accuracy on held-out real samples, and the publish verdict."""

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


def test_a_constant_model_scores_one_half_however_unbalanced_the_labels(store):
    episodes = _real_episodes(store)
    failures = [e for e in episodes if not e.label.success]
    # Three failures to every success: plain accuracy would give "always fail" 0.75.
    unbalanced = failures + [e for e in episodes if e.label.success][: len(failures) // 3]
    data_root = store.config.data_dir
    always_fail, samples = gate.serving_accuracy(_constant(0.1), data_root, unbalanced)
    always_succeed, _ = gate.serving_accuracy(_constant(0.9), data_root, unbalanced)
    assert (
        samples > 0 and always_fail == pytest.approx(0.5) and always_succeed == pytest.approx(0.5)
    )
    # With one class only, the score is that class's recall.
    only_failures, _ = gate.serving_accuracy(_constant(0.1), data_root, failures)
    assert only_failures == pytest.approx(1.0)


def test_decide_publishes_within_the_allowed_regression_only():
    first = gate.decide(0.6, None, None, 40, enabled=True, max_regression=0.02)
    assert first.passed and "no stable version" in first.message
    worse = gate.decide(0.6, 0.7, 3, 40, enabled=True, max_regression=0.02)
    assert not worse.passed and "not published" in worse.message
    close = gate.decide(0.69, 0.7, 3, 40, enabled=True, max_regression=0.02)
    assert close.passed and close.metrics["stable_version"] == 3.0
