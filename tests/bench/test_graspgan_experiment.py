"""The GraspGAN experiment end to end at the smallest size that still has both labels everywhere."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from bench import graspgan_experiment, graspgan_replicates

# The whole experiment runs in one fixture: 3 to 4 minutes on a busy 2-core machine, more
# beside another pytest worker. The suite's 300 s limit is for hangs, not for this.
pytestmark = pytest.mark.timeout(600)

SIM, REAL = 24, 32
SMALLEST = ["--quick", "--sim-episodes", str(SIM), "--real-episodes", str(REAL)]
SMALLEST += ["--max-steps", "6", "--graspgan-steps", "2", "--refiner-profile", "tiny"]
SMALLEST += ["--grasp-steps", "5", "--classifier-steps", "5"]
# One collection worker: each is a process that imports TensorFlow (the replicates runner
# lets workers differ between replicates, so the protocol is the same).
SMALLEST += ["--workers", "1"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One finished replicate (seed 3, two grasp seeds), run once through the replicates
    runner over a replicate left unfinished, and the folder that holds it."""
    root = tmp_path_factory.mktemp("graspgan") / "replicates"
    (root / "seed-3").mkdir(parents=True)
    (root / "seed-3" / "results.json").write_text(json.dumps({"finished": False}))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = graspgan_replicates.main(
            ["--root", str(root), "--seeds", "3", "--", *SMALLEST, "--grasp-seeds", "2"]
        )
    assert code == 0
    return root / "seed-3", root


def test_the_experiment_collects_refines_trains_and_reports(experiment):
    out, _ = experiment
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
    assert "| GRASPGAN_SIM_ONLY | refined sim |" in table and "| refined sim vs real |" in table


def test_replicates_resume_check_one_protocol_and_summarize_refined_minus_raw(
    experiment, tmp_path, capsys
):
    ran_folder, root = experiment
    # The replicate left unfinished was moved aside and run again, not mixed in.
    assert [p.name.split(".")[0] for p in root.glob("seed-3.unfinished-*")] == ["seed-3"]
    ran = json.loads((ran_folder / "results.json").read_text())
    assert ran["finished"] and ran["settings"]["seed"] == 3

    # A second replicate of the same protocol (its numbers shifted), to summarize across.
    other = tmp_path / "seed-9"
    other.mkdir()
    pair = "graspgan_sim_only - sim_only"
    shifted = json.loads(json.dumps(ran))
    shifted["settings"]["seed"] = 9
    for score in graspgan_experiment.SCORES:
        shifted["refined_minus_raw"][pair][score]["mean"] += 0.1
    (other / "results.json").write_text(json.dumps(shifted))
    args = ["--root", str(root), "--seeds", "3", "--include", str(other)]
    before = (ran_folder / "results.json").stat().st_mtime_ns
    # A finished replicate is kept: running again runs nothing.
    assert graspgan_replicates.main([*args, "--", *SMALLEST, "--grasp-seeds", "2"]) == 0
    assert (ran_folder / "results.json").stat().st_mtime_ns == before

    summary = json.loads((root / "summary.json").read_text())
    rows = summary["replicates"]
    assert [row["seed"] for row in rows] == [3, 9] and [r["grasp_seeds"] for r in rows] == [2, 2]
    for score in graspgan_experiment.SCORES:
        per_replicate = [r["refined_minus_raw"][pair][score]["mean"] for r in (ran, shifted)]
        across = summary["refined_minus_raw"][pair][score]
        assert across["mean"] == pytest.approx(sum(per_replicate) / 2)
        assert across["se"] == pytest.approx(abs(per_replicate[0] - per_replicate[1]) / 2)
        assert across["ahead"] == sum(d > 0 for d in per_replicate) and across["n"] == 2
    assert (root / "summary.md").read_text().strip() in capsys.readouterr().out

    # Another protocol is refused, naming the setting that differs.
    changed = tmp_path / "changed"
    changed.mkdir()
    different = {**ran, "settings": {**ran["settings"], "grasp_steps": 7, "seed": 11}}
    (changed / "results.json").write_text(json.dumps(different))
    with pytest.raises(SystemExit, match="grasp_steps differ"):
        graspgan_replicates.main(["--root", str(root), "--include", str(ran_folder), str(changed)])
    # The same replicate twice is not two replicates.
    with pytest.raises(SystemExit, match="share a seed"):
        graspgan_replicates.main(
            ["--root", str(root), "--include", str(ran_folder), str(ran_folder)]
        )
    # --summarize-only runs nothing and summarizes the finished replicates it is given.
    only = ["--root", str(root), "--include", str(other), "--summarize-only"]
    assert graspgan_replicates.main([*only, "--seeds", "3", "5"]) == 0
    assert not (root / "seed-5").exists()
    assert json.loads((root / "summary.json").read_text()) == summary
