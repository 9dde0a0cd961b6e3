"""Markdown tables, progress lines and the statistics the grasp-quality reports print."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence

import numpy as np


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table(columns: dict[str, str], rows: Iterable[dict]) -> str:
    """A markdown table of `rows` (dicts); `columns` maps each key to its header.

    Columns holding only numbers are right-aligned.
    """
    rows = list(rows)

    def numeric(key: str) -> bool:
        return all(isinstance(row.get(key), int | float | None) for row in rows)

    align = ["---:" if numeric(key) else "---" for key in columns]
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(row.get(key)) for key in columns) + " |" for row in rows]
    return "\n".join(lines)


def cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None without both labels."""
    scores, positive = np.asarray(scores, float), np.asarray(labels) > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based ranks
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binomial(successes: int, n: int) -> tuple[float, float]:
    rate = successes / n if n else 0.0
    return rate, math.sqrt(rate * (1.0 - rate) / n) if n else 0.0


def paired(pairs: Sequence[tuple[bool, bool]]) -> dict:
    """Outcomes of CEM and random on the same scenes, and their difference with its standard error.

    The paired standard error uses only the scenes where the two differ, which
    is what makes a same-scene comparison sharper than two independent rates.
    """
    n = len(pairs)
    cem_only = sum(c and not r for c, r in pairs)
    random_only = sum(r and not c for c, r in pairs)
    variance = (cem_only + random_only) / n**2 - (cem_only - random_only) ** 2 / n**3 if n else 0
    return {
        "scenes": n,
        "both": sum(c and r for c, r in pairs),
        "cem_only": cem_only,
        "random_only": random_only,
        "neither": sum(not (c or r) for c, r in pairs),
        "difference": (cem_only - random_only) / n if n else None,
        "difference_standard_error": math.sqrt(max(variance, 0.0)) if n else None,
    }
