"""Wilson intervals and paired bootstrap differences against known values."""

from __future__ import annotations

import pytest

from services.evaluation.stats import paired_difference, wilson


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
