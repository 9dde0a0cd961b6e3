"""A validation arm's report pools only fully scored rows and pairs rows by scene."""

from __future__ import annotations

from pathlib import Path

from experiments.arms import arm_markdown, arm_report
from models.scoring import wilson

ARM = Path(__file__).parents[2] / "robots" / "evaluation" / "proxy-real-sim-test.yaml"


def _record(successes: set[int], scenes: int = 10) -> dict:
    return {
        **wilson(len(successes), scenes).as_dict(),
        "outcomes": {str(s): s in successes for s in range(scenes)},
    }


def test_rows_pool_their_seeds_and_a_partly_scored_row_waits():
    scores = {
        "random": _record({0}),
        "oracle": _record(set(range(9))),
        "a-s0": _record({0, 1, 2, 3}),
        "a-s1": _record({0, 1}),
        "b-s0": _record({0}),
        "b-s1": _record({0}),
        "c-s0": _record({5}),  # c-s1 not scored yet
    }
    trained = {name: {"metrics": {"best_step": 3, "auc": 0.7}} for name in scores}
    rows = {row: [f"{row}-s0", f"{row}-s1"] for row in ("a", "b", "c")}
    report = arm_report(ARM, rows, trained, scores, [("a", "b"), ("c", "b")])

    assert report["arm"] == "robots/evaluation/proxy-real-sim-test.yaml"
    assert report["rows"]["a"]["pooled"]["successes"] == 6
    assert report["rows"]["a"]["pooled"]["episodes"] == 20
    assert report["not_yet_scored"] == ["c"] and "c" not in report["rows"]
    # a: 0.4 and 0.2 on the scenes, b: 0.1 and 0.1 -> a - b = 0.2; c - b waits for c.
    assert list(report["planned"]) == ["a - b"]
    assert abs(report["planned"]["a - b"]["difference"] - 0.2) < 1e-9
    assert abs(report["rows"]["b"]["minus_random"]["difference"]) < 1e-9
    text = "\n".join(arm_markdown(report))
    assert "| a | 4, 2 | 6/20, 30.0%" in text and "| c | not yet scored | | |" in text
    assert "Planned: a - b +0.200" in text
