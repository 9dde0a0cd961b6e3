"""make sim2real on tiny settings: every kind of stage end to end, and a rerun that resumes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from experiments.sim2real import report
from experiments.sim2real.__main__ import run
from experiments.sim2real.protocol import QUICK

# The first phase at its smallest: collections, a model, the closed loop with the
# baselines and the gap decomposition, the report. Every kind of stage (generators,
# refined data, real budgets, fine-tuning) runs in `python -m experiments.sim2real --quick`.
# One shard per collection and evaluation (each shard is a worker process that imports
# TensorFlow; sharding has its own tests in tests/sim_farm and tests/evaluation), with a data
# seed whose 12 plain sim episodes hold both labels (5 successes) on one shard.
SETTINGS = replace(
    QUICK,
    rows=("sim-only",),
    sim_episodes=12,
    sim_validation_episodes=4,
    scenes=2,
    shards=1,
    data_seed=32,
)


def test_the_quick_table_runs_every_stage_and_a_rerun_recomputes_nothing(tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    result = run(SETTINGS, root, out, "test")

    assert set(result["baselines"]) == {"random", "oracle"}
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"sim-only"}
    for row in rows.values():
        assert row["episodes"] == SETTINGS.scenes and 0 <= row["low"] <= row["rate"] <= row["high"]
    assert set(result["gap_decomposition"]) == {"none", "sensor"}
    assert result["data"]["real_all"]["episodes"] == 0  # no row here needs real data
    assert {(p["a"], p["b"]) for p in result["paired"]} >= {("sim-only", "random")}
    assert json.loads((out / "sim2real.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "sim2real.png").stat().st_size > 0 and "| oracle |" in (
        out / "sim2real.md"
    ).read_text()
    stages = sorted(p.name for p in (root / "stages").iterdir())
    assert any(s.startswith("grasp-sim-only-s0-") for s in stages)

    # A rerun finds every stage done: no stage is added, the result is the same.
    again = run(SETTINGS, root, out, "test")
    assert sorted(p.name for p in (root / "stages").iterdir()) == stages
    assert (
        again["rows"] == result["rows"]
        and again["gap_decomposition"] == result["gap_decomposition"]
    )

    # Another machine (no stages at all) with the committed report: everything it scored is
    # carried over, nothing is collected, trained or evaluated again.
    elsewhere = run(SETTINGS, tmp_path / "elsewhere", out, "test")
    assert not list((tmp_path / "elsewhere" / "stages").iterdir())
    assert elsewhere["rows"] == result["rows"] and elsewhere["baselines"] == result["baselines"]
    assert elsewhere["paired"] == result["paired"]
    assert [r["scored"] for r in elsewhere["runs"]] == [r["scored"] for r in result["runs"]]


def test_scores_carry_over_only_within_one_protocol(tmp_path):
    path = tmp_path / "sim2real.json"
    record = {"successes": 1, "episodes": 2, "rate": 0.5, "low": 0.1, "high": 0.9}
    prior = {
        "protocol": report.protocol(SETTINGS),
        "data": {"sim": {"episodes": 12, "successes": 5}},
        "baselines": {"random": {**record, "outcomes": {"0": True, "1": False}}, "oracle": record},
        "rows": [],
        "gap_decomposition": {},
    }
    path.write_text(json.dumps(prior))
    carried = report.carried(path, report.protocol(SETTINGS))
    assert set(carried.scores) == {"random"}  # the oracle's record has no per-scene outcomes
    other = report.protocol(replace(SETTINGS, scenes=3))
    assert not report.carried(path, other).scores
    # The same collection giving other episodes is an error, not a silent mix.
    with pytest.raises(RuntimeError, match="not reproducing"):
        report.merge_data(carried.data, {"sim": {"episodes": 12, "successes": 4}})
    assert report.merge_data(carried.data, {"real_all": {"episodes": 0, "successes": 0}}) == {
        "sim": {"episodes": 12, "successes": 5},
        "real_all": {"episodes": 0, "successes": 0},
    }


def test_a_new_protocol_version_reuses_no_stage_collection_or_evaluation(tmp_path, monkeypatch):
    # Protocol 2's first run scored random and the oracle from protocol 1's cached stages,
    # and its models from protocol 1's evaluation episodes: nothing keyed the version.
    from experiments.sim2real import data, evaluate, stages

    evaluations = evaluate.Evaluations(SETTINGS, tmp_path, stages.Stages(tmp_path))
    arm = evaluations.arm(None)

    def keys() -> tuple:
        ids = data.collection_ids(SETTINGS)
        return stages.key({"stage": 1}), *ids.values(), evaluations.spec("main", arm).evaluation_id

    before = keys()
    monkeypatch.setattr(stages, "PROTOCOL_VERSION", 3)
    monkeypatch.setattr(evaluate, "PROTOCOL_VERSION", 3)
    after = keys()
    assert all(a != b for a, b in zip(before, after, strict=True))


def test_the_learning_curves_shares_are_nested_and_seeded():
    from experiments.sim2real.learning_curve import nested_shares

    episodes = list(range(100))
    shares = nested_shares(episodes, [0.25, 0.5, 1.0], seed=31)
    assert [len(shares[s]) for s in (0.25, 0.5, 1.0)] == [25, 50, 100]
    assert shares[0.5][:25] == shares[0.25] and sorted(shares[1.0]) == episodes
    assert shares[1.0] != episodes  # shuffled, so a share is not the collection's first bins
    assert nested_shares(episodes, [0.25], seed=31)[0.25] == shares[0.25]


def test_every_graspgan_row_has_three_generator_seeds():
    # The generator seed was the largest source of variance: each GraspGAN row, Table III's
    # included, pools the grasp models of three generators, not one.
    from experiments.sim2real.__main__ import seeds
    from experiments.sim2real.protocol import Settings, table_rows

    settings = Settings()
    graspgan = [r for r in table_rows() if r.sim == "graspgan"]
    assert {r.name for r in graspgan} == {"graspgan", "graspgan-low", "graspgan-all"}
    for row in graspgan:
        assert seeds(row, settings) == settings.graspgan_seeds
        assert len(set(seeds(row, settings))) >= 3
