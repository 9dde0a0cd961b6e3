"""The GraspGAN experiment end to end at the smallest size that still has both labels everywhere."""

from __future__ import annotations

import json

import pytest

from bench import graspgan_experiment

SIM, REAL = 24, 32


def test_the_experiment_collects_refines_trains_and_reports(tmp_path, capsys):
    out = tmp_path / "experiment"
    smallest = ["--sim-episodes", str(SIM), "--real-episodes", str(REAL), "--max-steps", "6"]
    smallest += ["--graspgan-steps", "2", "--refiner-profile", "tiny", "--grasp-steps", "5"]
    smallest += ["--classifier-steps", "5", "--grasp-seeds", "2", "--seed", "3"]
    assert graspgan_experiment.main(["--quick", *smallest, "--out", str(out)]) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["finished"] and results["timings"]["total_s"] > 0
    data = results["data"]
    # Every collected episode is on exactly one side of the splits.
    assert data["sim_train"]["episodes"] + data["sim_held_out"]["episodes"] == SIM
    assert data["real_train"]["episodes"] + data["real_validation"]["episodes"] == REAL
    assert data["real_validation"]["episodes"] > 0 and data["sim_held_out"]["episodes"] > 0
    # The generator refined x0 and every step of every simulated training episode.
    refinement = results["graspgan"]["refinement"]
    assert refinement["episodes"] == data["sim_train"]["episodes"]
    assert refinement["images"] == data["sim_train"]["steps"] + data["sim_train"]["episodes"]
    scene = results["graspgan"]["scene"]
    assert {"mask_accuracy", "mask_iou_arm", "mask_iou_object"} <= set(scene)
    assert all(0.0 <= scene[k] <= 1.0 for k in scene if k.startswith("mask_"))

    models = results["grasp_models"]
    assert sorted(m["recipe"] for m in models.values()) == ["GRASPGAN_SIM_ONLY", "SIM_ONLY"]
    for model in models.values():
        assert model["samples"] == data["real_validation"]["steps"]
        assert 0.0 <= model["accuracy"] <= 1.0 and 0.0 <= model["balanced_accuracy"] <= 1.0
        # One model per seed, counted from --seed; the row is their mean.
        assert [s["seed"] for s in model["seeds"]] == [3, 4]
        assert model["accuracy"] == pytest.approx(sum(s["accuracy"] for s in model["seeds"]) / 2)
    difference = results["refined_minus_raw"]["graspgan_sim_only - sim_only"]["accuracy"]
    raw, refined = models["sim_only"]["seeds"], models["graspgan_sim_only"]["seeds"]
    assert difference["per_seed"] == pytest.approx(
        [b["accuracy"] - a["accuracy"] for a, b in zip(raw, refined, strict=True)]
    )
    for classifier in results["domain_classifier"].values():
        assert 0.0 <= classifier["test_accuracy"] <= 1.0
        assert classifier["test_images"] > 0 and classifier["test_images"] % 2 == 0

    table = (out / "results.md").read_text()
    assert table.strip() in capsys.readouterr().out
    assert "| GRASPGAN_SIM_ONLY | refined sim |" in table and "| refined sim vs real |" in table
