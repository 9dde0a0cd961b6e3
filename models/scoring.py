"""Every score graspfleet reports, computed once.

AUC, balanced accuracy, Wilson intervals, paired differences (over scenes, and
over seeds and scenes), and the rollout's probability that a canary is not
worse than stable.

Offline scores of a grasp model (AUC, balanced accuracy, log loss over
recorded steps) are diagnostics; closed-loop success rates with their Wilson
intervals, and paired differences between contenders on the same scenes, are
results. Training, the trainer's gate, the closed-loop evaluator and the
experiments all call these functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
        """The rate as a plain dict, for JSON reports."""
        return asdict(self)


def rate_text(rate: Rate | Mapping, *, counts: bool = True) -> str:
    """A rate (a `Rate` or its dict) as every report prints it.

    "12/150, 8.0% [4.6%, 13.5%]"; without `counts`, "8.0% [4.6%, 13.5%]"; "-" for no episodes.
    """
    r = rate.as_dict() if isinstance(rate, Rate) else rate
    if not r["episodes"]:
        return "-"
    text = f"{r['rate']:.1%} [{r['low']:.1%}, {r['high']:.1%}]"
    return f"{r['successes']}/{r['episodes']}, {text}" if counts else text


def difference_text(difference: Mapping) -> str:
    """A difference with its interval (a dict of any difference here): "+0.068 [-0.020, +0.158]"."""
    d = difference
    return f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


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
        """The difference as a plain dict, for JSON reports."""
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


@dataclass(frozen=True)
class SeededDifference:
    """Row A's success minus row B's, with a hierarchical bootstrap interval.

    Each row is a set of trained seeds scored on the same scenes; the interval is
    over seeds and scenes.
    """

    a_seeds: int
    b_seeds: int
    scenes: int
    difference: float
    low: float
    high: float

    def as_dict(self) -> dict:
        """The difference as a plain dict, for JSON reports."""
        return asdict(self)


def seeded_difference(
    a: Sequence[Mapping[int, bool]],
    b: Sequence[Mapping[int, bool]],
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> SeededDifference:
    """A's mean success minus B's, where each row is several trained models (seeds).

    The interval is a two-level percentile bootstrap: each resample draws A's seeds
    and B's seeds with replacement (training noise), then the scenes with replacement
    (shared by both rows, so the scene pairing is kept), and recomputes the
    difference of the two rows' mean success. With one seed per row it is
    `paired_difference`'s scene bootstrap; with several, a seed that alone carries
    a row widens the interval, as it should.

    Args:
        a: Per seed of row A, its outcome per scene id.
        b: Per seed of row B, its outcome per scene id.
        resamples: How many bootstrap resamples the interval is taken from.
        seed: Seeds the bootstrap's random draws, so a report can be reproduced.

    Raises:
        ValueError: a row without seeds, or no scene that every model attempted.
    """
    if not a or not b:
        raise ValueError(f"each row needs at least one seed: got {len(a)} and {len(b)}")
    scenes = sorted(set.intersection(*(set(o) for o in (*a, *b))))
    if not scenes:
        raise ValueError("the models share no scene: their rows cannot be paired")
    rows = [
        np.array([[float(o[s]) for s in scenes] for o in row], dtype=np.float64) for row in (a, b)
    ]
    rng = np.random.default_rng(seed)
    means = []
    for outcomes in rows:
        picked = rng.integers(0, len(outcomes), size=(resamples, len(outcomes)))
        means.append(outcomes[picked].mean(axis=1))  # [resamples, scenes]: a drawn row's mean
    delta = means[0] - means[1]
    drawn = rng.integers(0, len(scenes), size=(resamples, len(scenes)))
    resampled = np.take_along_axis(delta, drawn, axis=1).mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return SeededDifference(
        a_seeds=len(a),
        b_seeds=len(b),
        scenes=len(scenes),
        difference=float(rows[0].mean() - rows[1].mean()),
        low=float(low),
        high=float(high),
    )


def probability_not_worse(
    a_successes: int,
    a_attempts: int,
    b_successes: int,
    b_attempts: int,
    margin: float = 0.0,
    cells: int = 4000,
) -> float:
    """P(rate of A > rate of B − margin), each rate with a uniform prior updated by its counts.

    The two rates are independent Beta(1 + successes, 1 + failures) posteriors; the
    probability is integrated on a grid of `cells` (no sampling: the same counts give
    the same number). `margin` 0 is the probability that A is better; 1 minus it, that
    A is worse.

    Raises:
        ValueError: counts out of range, or a margin outside [0, 1).
    """
    for successes, attempts in ((a_successes, a_attempts), (b_successes, b_attempts)):
        if not 0 <= successes <= attempts:
            raise ValueError(f"successes={successes} must be in [0, attempts={attempts}]")
    if not 0 <= margin < 1:
        raise ValueError(f"margin={margin} must be in [0, 1)")
    x = (np.arange(cells) + 0.5) / cells
    a = _beta_cells(x, a_successes, a_attempts)
    b = _beta_cells(x, b_successes, b_attempts)
    # P(A <= y) at the cell edges, linear within a cell; B's cell j needs A > x_j − margin.
    edges = np.arange(cells + 1) / cells
    a_cdf = np.concatenate([[0.0], np.cumsum(a)])
    below = np.interp(x - margin, edges, a_cdf)
    return float(np.clip(np.sum(b * (1.0 - below)), 0.0, 1.0))


def _beta_cells(x: np.ndarray, successes: int, attempts: int) -> np.ndarray:
    """The posterior's mass per grid cell (normalized on the grid)."""
    log_pdf = successes * np.log(x) + (attempts - successes) * np.log1p(-x)
    mass = np.exp(log_pdf - log_pdf.max())
    return mass / mass.sum()


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve, exact (the Mann-Whitney statistic; ties count half).

    Returns:
        The AUC, or None when the labels hold only one class (it is undefined then).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based ranks
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def balanced_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean recall over the classes present, deciding "success" above 0.5.

    A set of failures only scores the failure recall alone; an empty set scores 0.
    """
    predicted = np.asarray(probabilities) > 0.5
    actual = np.asarray(labels) > 0.5
    recalls = [
        np.mean(predicted[actual == cls] == cls) for cls in (False, True) if np.any(actual == cls)
    ]
    return float(np.mean(recalls)) if recalls else 0.0


def binary_scores(*, probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Samples, accuracy, balanced accuracy, log loss and (with both classes) AUC of predictions.

    Keyword-only: both arguments are arrays of the same shape, and swapping them
    returns numbers of the right type and the wrong meaning (it once did, choosing
    every model's weights by a balanced accuracy read as an AUC).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    scores = {
        "samples": float(len(labels)),
        "accuracy": float(np.mean((probabilities > 0.5) == (labels > 0.5))),
        "balanced_accuracy": balanced_accuracy(probabilities, labels),
        "log_loss": float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))),
    }
    area = auc(probabilities, labels)
    if area is not None:
        scores["auc"] = area
    return scores
