"""The grasp-quality benchmark at the smallest size: collect (and reuse), train, geometry."""

from __future__ import annotations

import json

import pytest

from bench.grasp_quality.__main__ import main
from bench.grasp_quality.data import open_store, split_episodes
from bench.grasp_quality.report import auc, paired

TRAIN, TEST, STEPS = 8, 6, 8


def _run(capsys, tmp_path, *argv: str) -> dict:
    out = tmp_path / f"{argv[0]}.json"
    assert main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\n|---" in printed  # a markdown table
    return json.loads(out.read_text())[argv[0]]


def _in_unit(value) -> bool:
    return value is None or 0.0 <= value <= 1.0


def test_auc_counts_ties_as_half():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([1.0, 1.0, 0.0], [1, 0, 0]) == pytest.approx(0.75)
    assert auc([0.2, 0.3], [1, 1]) is None


def test_paired_outcomes_on_the_same_scenes():
    pairs = [(True, False), (True, False), (False, True), (True, True), (False, False)]
    outcomes = paired(pairs)
    counts = [outcomes[k] for k in ("both", "cem_only", "random_only", "neither")]
    assert counts == [1, 2, 1, 1]
    assert outcomes["difference"] == pytest.approx(0.2)
    assert outcomes["difference_standard_error"] == pytest.approx((3 / 25 - 1 / 125) ** 0.5)


def test_collect_reuse_train_and_geometry(tmp_path, capsys):
    data, models = tmp_path / "data", tmp_path / "models"
    collect = ["collect", "--data", str(data), "--workers", "1", "--attempts", "2"]
    collect += ["--train-episodes", str(TRAIN), "--test-episodes", str(TEST)]
    collect += ["--oracle-fraction", "0.75", "--oracle-sigma-m", "0.005"]
    first = _run(capsys, tmp_path, *collect)
    assert first["new_episodes"] == TRAIN + TEST
    rows = first["splits"]
    assert sum(r["episodes"] for r in rows if r["split"] == "train") == TRAIN
    assert [(r["split"], r["policy"], r["episodes"]) for r in rows if r["split"] == "test"] == [
        ("test", "random", TEST)
    ]
    assert {r["policy"] for r in rows if r["split"] == "train"} <= {"random", "noisy-oracle"}
    assert all(r["successes"] == round(r["success_rate"] * r["episodes"]) for r in rows)

    # Attempts: episodes 0 and 1 are two tries at one scene, with other policy seeds.
    store = open_store(data)
    try:
        train = split_episodes(store, "train")
    finally:
        store.close()
    assert train[0].seed == train[1].seed != train[2].seed
    assert train[0].object_ids == train[1].object_ids
    assert train[0].attributes["policy_seed"] != train[1].attributes["policy_seed"]

    # The folder is reused: nothing new to collect; other settings are refused.
    assert _run(capsys, tmp_path, *collect)["new_episodes"] == 0
    with pytest.raises(SystemExit, match="other settings"):
        main([*collect[:-1], "0.05"])

    trained = _run(
        capsys,
        tmp_path,
        *["train", "--data", str(data), "--models", str(models), "--steps", "6"],
        *["--eval-every", "3", "--batch-size", "8", "--train-eval-episodes", "4"],
    )
    assert trained["version"] == 1 and (models / "grasp_success" / "1").is_dir()
    assert [row["step"] for row in trained["curve"]] == [3, 6]
    assert trained["kept_step"] in (3, 6)
    for row in trained["curve"]:
        assert _in_unit(row["validation_auc"]) and 0.0 <= row["validation_accuracy"] <= 1.0
    validation = trained["kept"]["validation"]
    assert validation["samples"] == TEST * STEPS  # random exploration never closes early
    assert trained["kept"]["train_subset"]["episodes"] == 4
    by_step = trained["validation_by_step_index"]
    assert [r["step_index"] for r in by_step] == list(range(STEPS))
    assert sum(r["samples"] for r in by_step) == validation["samples"]
    for quality in (validation, trained["kept"]["train_subset"], *by_step):
        assert _in_unit(quality["auc"]) and _in_unit(quality["accuracy"])
        # AUC exists exactly when both outcomes are among the samples.
        assert (quality["auc"] is None) == (quality["success_rate"] in (0.0, 1.0))

    geometry = _run(capsys, tmp_path, "geometry", "--episodes", "6", "--workers", "1")
    assert geometry["episodes"] == 6 and _in_unit(geometry["auc_negative_distance"])
    shares = [row["share"] for row in geometry["thresholds"]]
    assert shares == sorted(shares) and all(0.0 <= s <= 1.0 for s in shares)
    assert all(_in_unit(row["success_within"]) for row in geometry["thresholds"])


def test_aiming_runs_every_variant_on_the_same_scenes(tmp_path, capsys):
    result = _run(capsys, tmp_path, "aiming", "--episodes", "3", "--workers", "1")
    rows = {row["variant"]: row for row in result["variants"]}
    assert set(rows) == {
        "oracle plan",
        "plan + 1 cm",
        "plan + 2 cm",
        "plan, random yaw",
        "random exploration",
    }
    assert all(row["episodes"] == 3 and 0 <= row["successes"] <= 3 for row in rows.values())
    # The exact plan is what proves grasps achievable: it must not fail on three scenes.
    assert rows["oracle plan"]["successes"] >= 2
