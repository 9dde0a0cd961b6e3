"""The scores: Wilson intervals, paired differences, AUC, balanced accuracy, against known values."""

from __future__ import annotations

import numpy as np
import pytest

from models.scoring import auc, balanced_accuracy, binary_scores, paired_difference, wilson


def test_wilson_matches_the_textbook_values():
    rate = wilson(81, 263)  # Wilson (1927) via Newcombe (1998), example: 0.2553-0.3662
    assert rate.rate == pytest.approx(81 / 263)
    assert (rate.low, rate.high) == pytest.approx((0.2553, 0.3662), abs=5e-4)
    assert (wilson(0, 10).low, wilson(10, 10).high) == (0.0, 1.0)
    assert wilson(0, 10).high == pytest.approx(0.2775, abs=5e-4)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_paired_difference_pairs_by_scene_and_brackets_the_mean():
    a = {s: s % 2 == 0 for s in range(200)}  # 50%
    b = {s: s % 4 == 0 for s in range(200)}  # 25%, and a success only where a has one
    d = paired_difference(a, b, seed=1)
    assert d.scenes == 200 and d.a_only == 50 and d.b_only == 0
    assert d.difference == pytest.approx(0.25)
    assert d.low < 0.25 < d.high and d.low > 0.15 and d.high < 0.35
    same = paired_difference(a, a)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    only_shared = paired_difference({1: True, 2: True}, {2: False, 3: True})
    assert only_shared.scenes == 1 and only_shared.difference == 1.0
    with pytest.raises(ValueError, match="share no scene"):
        paired_difference({1: True}, {2: True})


def test_auc_is_the_probability_that_a_success_outranks_a_failure():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.9])
    pairs = [(s, f) for s in scores[labels == 1] for f in scores[labels == 0]]
    expected = np.mean([1.0 if s > f else 0.5 if s == f else 0.0 for s, f in pairs])
    assert auc(scores, labels) == pytest.approx(expected)
    assert auc(np.arange(4), [0, 0, 1, 1]) == 1.0
    assert auc(np.arange(4), [1, 1, 0, 0]) == 0.0
    assert auc([0.3, 0.3], [0, 1]) == 0.5
    assert auc([0.2, 0.9], [1, 1]) is None  # one class only: undefined, not 0 or 1


def test_balanced_accuracy_weights_the_classes_equally():
    # 9 failures all right, 1 success wrong: plain accuracy 0.9, balanced 0.5.
    labels = np.array([0] * 9 + [1])
    probabilities = np.zeros(10)
    assert balanced_accuracy(probabilities, labels) == 0.5
    assert balanced_accuracy(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0
    assert balanced_accuracy(np.zeros(3), np.zeros(3)) == 1.0  # failures only: their recall
    assert balanced_accuracy(np.zeros(0), np.zeros(0)) == 0.0


def test_binary_scores_report_every_score_and_auc_only_when_defined():
    scores = binary_scores(
        probabilities=np.array([0.9, 0.2, 0.6, 0.4]), labels=np.array([1, 0, 0, 1])
    )
    assert scores["samples"] == 4 and scores["accuracy"] == 0.5
    assert scores["balanced_accuracy"] == 0.5 and scores["auc"] == 0.75
    assert scores["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.4])), rel=1e-6)
    assert "auc" not in binary_scores(probabilities=np.array([0.9]), labels=np.array([1]))


def test_probability_not_worse_integrates_the_two_posteriors():
    from models.scoring import probability_not_worse

    assert probability_not_worse(50, 100, 50, 100) == pytest.approx(0.5, abs=1e-9)
    # Against sampling the two Beta posteriors (a million draws: +-0.001).
    rng = np.random.default_rng(0)
    for a, n, b, m, margin in ((30, 100, 35, 100, 0.05), (5, 20, 12, 30, 0.1), (9, 10, 8, 10, 0)):
        draws_a = rng.beta(1 + a, 1 + n - a, 1_000_000)
        draws_b = rng.beta(1 + b, 1 + m - b, 1_000_000)
        sampled = float((draws_a > draws_b - margin).mean())
        assert probability_not_worse(a, n, b, m, margin) == pytest.approx(sampled, abs=0.003)
    with pytest.raises(ValueError, match="successes"):
        probability_not_worse(3, 2, 1, 2)
    with pytest.raises(ValueError, match="margin"):
        probability_not_worse(1, 2, 1, 2, margin=-0.1)


def test_seeded_difference_with_one_seed_each_is_the_scene_bootstrap():
    from models.scoring import seeded_difference

    rng = np.random.default_rng(4)
    a = {s: bool(rng.random() < 0.5) for s in range(200)}
    b = {s: bool(rng.random() < 0.3) for s in range(200)}
    scenes_only = paired_difference(a, b)
    both = seeded_difference([a], [b])
    assert both.difference == pytest.approx(scenes_only.difference)
    assert both.low == pytest.approx(scenes_only.low, abs=0.01)
    assert both.high == pytest.approx(scenes_only.high, abs=0.01)


def test_seeded_difference_widens_with_the_spread_between_seeds():
    from models.scoring import seeded_difference

    scenes = range(150)
    b = [{s: s % 10 == 0 for s in scenes}] * 3  # 10%, three identical seeds
    steady = [{s: s % 5 == 0 for s in scenes}] * 3  # 20% each
    # The same mean (20%) from seeds at 0%, 20% and 40%: training noise the scenes cannot show.
    spread = [
        {s: False for s in scenes},
        {s: s % 5 == 0 for s in scenes},
        {s: s % 5 < 2 for s in scenes},
    ]
    narrow, wide = seeded_difference(steady, b), seeded_difference(spread, b)
    assert narrow.difference == pytest.approx(0.1) and wide.difference == pytest.approx(0.1)
    assert (wide.high - wide.low) > 2 * (narrow.high - narrow.low)
    assert wide.low < 0 < narrow.low  # the spread makes the gain unproven
    assert (wide.a_seeds, wide.b_seeds, wide.scenes) == (3, 3, 150)
    with pytest.raises(ValueError, match="seed"):
        seeded_difference([], b)
    with pytest.raises(ValueError, match="share no scene"):
        seeded_difference([{1: True}], [{2: False}])


def test_rates_and_differences_print_as_the_reports_show_them():
    from models.scoring import difference_text, rate_text

    assert rate_text(wilson(0, 10)) == "0/10, 0.0% [0.0%, 27.8%]"
    assert rate_text({"successes": 3, "episodes": 4, "rate": 0.75, "low": 0.3, "high": 0.95}) == (
        "3/4, 75.0% [30.0%, 95.0%]"
    )
    assert difference_text({"difference": 0.068, "low": -0.02, "high": 0.158}) == (
        "+0.068 [-0.020, +0.158]"
    )
    assert rate_text(wilson(3, 10), counts=False) == "30.0% [10.8%, 60.3%]"
    assert rate_text(wilson(0, 0)) == "-"
