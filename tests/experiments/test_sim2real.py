"""make sim2real on tiny settings: every kind of stage end to end, and a rerun that resumes."""

from __future__ import annotations

import json
from dataclasses import replace

from experiments.sim2real.__main__ import run
from experiments.sim2real.protocol import QUICK

# Plain sim (with the baselines and the gap decomposition) and the RCAN chain: the
# generator, canonicalized data, the zero-shot model it starts from, and the fine-tune
# on a real budget, scored behind the generator as a transform.
SETTINGS = replace(QUICK, rows=("sim-only", "rcan-ft-low"))


def test_the_quick_table_runs_every_stage_and_a_rerun_recomputes_nothing(tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    result = run(SETTINGS, root, out, "test")

    assert set(result["baselines"]) == {"random", "oracle"}
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"sim-only", "rcan-ft-low"}
    for row in rows.values():
        assert row["episodes"] == SETTINGS.scenes and 0 <= row["low"] <= row["rate"] <= row["high"]
    assert set(result["gap_decomposition"]) == {"none", "sensor"}
    assert result["data"]["real_low"]["episodes"] == SETTINGS.low_real_episodes
    assert {(p["a"], p["b"]) for p in result["paired"]} >= {("sim-only", "random")}
    assert json.loads((out / "sim2real.json").read_text()) == result
    assert (out / "sim2real.png").stat().st_size > 0 and "| oracle |" in (
        out / "sim2real.md"
    ).read_text()
    stages = sorted(p.name for p in (root / "stages").iterdir())
    assert any(s.startswith("generator-rcan-") for s in stages)
    assert any(s.startswith("grasp-rcan-s0-") for s in stages)  # the model fine-tuning starts from

    # A rerun finds every stage done: no stage is added, the result is the same.
    again = run(SETTINGS, root, out, "test")
    assert sorted(p.name for p in (root / "stages").iterdir()) == stages
    assert (
        again["rows"] == result["rows"]
        and again["gap_decomposition"] == result["gap_decomposition"]
    )
