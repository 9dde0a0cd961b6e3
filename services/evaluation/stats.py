"""Grasp-success statistics: Wilson intervals for rates, paired bootstrap for differences."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """A success rate with its Wilson 95% interval."""

    successes: int
    episodes: int
    rate: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return asdict(self)


def wilson(successes: int, episodes: int, z: float = Z95) -> Rate:
    """The Wilson score interval of `successes` out of `episodes` (95% by default).

    Raises:
        ValueError: counts out of range.
    """
    if episodes < 0 or not 0 <= successes <= episodes:
        raise ValueError(f"{successes} successes of {episodes} episodes")
    if episodes == 0:
        return Rate(0, 0, 0.0, 0.0, 1.0)
    p = successes / episodes
    denominator = 1 + z * z / episodes
    centre = (p + z * z / (2 * episodes)) / denominator
    half = z * math.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes * episodes)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == episodes else min(1.0, centre + half)
    return Rate(successes, episodes, p, low, high)


@dataclass(frozen=True)
class PairedDifference:
    """Success of A minus success of B on the scenes both attempted, with a bootstrap interval."""

    scenes: int
    a_only: int
    b_only: int
    difference: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return asdict(self)


def paired_difference(
    a: Mapping[int, float],
    b: Mapping[int, float],
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """A's success rate minus B's over the scenes (keys) both have, paired by scene.

    Outcomes are successes (bool) or, for a row of several models, the share of
    them that succeeded on the scene. The interval is the 95% percentile bootstrap over scenes: scenes are drawn
    with replacement and the difference recomputed, so the scene-to-scene
    correlation of the two outcomes is kept.

    Raises:
        ValueError: the two share no scene.
    """
    scenes = sorted(a.keys() & b.keys())
    if not scenes:
        raise ValueError("the two evaluations share no scene: they cannot be paired")
    delta = np.array([float(a[s]) - float(b[s]) for s in scenes], dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(delta), size=(resamples, len(delta)))
    means = delta[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedDifference(
        scenes=len(scenes),
        a_only=int((delta > 0).sum()),
        b_only=int((delta < 0).sum()),
        difference=float(delta.mean()),
        low=float(low),
        high=float(high),
    )
