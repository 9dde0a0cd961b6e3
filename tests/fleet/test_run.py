"""`make run` end to end, on the smallest plan that still turns the flywheel once.

Every part is the one `make run` starts: Prometheus (when the binary is there), the
store, predictor, planner, refiner, sim-farm and trainer as service processes, the
arms' agents, version 1 through the trainer, an automatic retraining and the report.
Only the plan is tiny (a few grasps, tens of training steps, a flywheel that stops when
its first automatic retraining has ended).
"""

from __future__ import annotations

import json

import pytest

from services.fleet import run

TINY_PLAN = [
    "--quick",
    # The flywheel stops when its first automatic run has ended (about 2 min in on two
    # idle cores); the budget is only a cap for a slower machine.
    "--minutes", "5",
    "--until-runs", "1",
    "--bootstrap-episodes", "12",
    "--train-steps", "20",
    "--retrain-every", "3",
    "--retrain-first", "0",
    "--retrain-steps", "10",
    "--min-grasps", "2",
]  # fmt: skip


@pytest.mark.timeout(420)
def test_make_run_turns_once_and_writes_its_report(tmp_path, monkeypatch, capsys):
    # run.main hands the services its bearer token through the environment.
    monkeypatch.setenv("GRASPFLEET_AUTH_TOKEN", "")
    workdir, reports = tmp_path / "fleet", tmp_path / "reports"
    argv = [*TINY_PLAN, "--workdir", str(workdir), "--reports", str(reports)]

    assert run.main(argv) == 0

    printed = capsys.readouterr().out
    stages = ("[1/5] services", "[3/5] version 1", "[4/5] the flywheel", "[5/5] the arms stop")
    for stage in stages:
        assert stage in printed
    [report_dir] = reports.iterdir()
    summary = json.loads((report_dir / "summary.json").read_text())
    versions = {row["version"]: row for row in summary["versions"]}
    assert versions[0]["grasps"]["episodes"] == 2 * 4  # the arms' first tries, at random
    assert versions[1]["recipe"] == "SIM_ONLY"
    assert versions[1]["sim_episodes"] == 12 and versions[1]["real_episodes"] == 0
    assert versions[1]["grasps"]["episodes"] > 0  # the arms grasped with version 1
    assert [r["submitted_by"] for r in summary["runs"]][:2] == ["make-run", "auto-retrain"]
    assert summary["runs"][1]["state"] in ("succeeded", "rejected")  # it ended, as asked
    assert "1 automatic retraining(s) ended: the flywheel stops" in printed
    assert summary["plan"]["retrain_every"] == 3
    # The label moves of summary.md: version 1 made canary by its run, stable by make run.
    moves = [(c["label"], c["version"], c["by"]) for c in summary["label_changes"]][:2]
    assert sorted(moves)[0][:2] == ("canary", 1) and ("stable", 1, "make-run") in moves
    assert {"kuka-01", "kuka-02"} == set(summary["arms"])
    text = (report_dir / "summary.md").read_text()
    assert "| v1 | SIM_ONLY |" in text
    # The run ends on the real-test arm: its stable version, random and the oracle, paired.
    test_arm = summary["test_arm"]
    stable = test_arm["stable_version"]
    assert stable >= 1 and test_arm["arm"] == "eval-proxy-real" and test_arm["scenes"] == 4
    contenders = {row["name"]: row for row in test_arm["contenders"]}
    assert set(contenders) == {f"stable-v{stable}", "random", "oracle"}
    assert {row["episodes"] for row in contenders.values()} == {4}
    assert contenders[f"stable-v{stable}"]["servoing"]["all"]["episodes"] == 4
    assert "## On the real-test arm" in text and f"stable-v{stable} minus random" in text
    # The version scored is the one the run ends on: the stable label's last move.
    stable_moves = [c["version"] for c in summary["label_changes"] if c["label"] == "stable"]
    assert stable_moves[-1] == stable
    assert (report_dir / "success_over_time.png").stat().st_size > 0
    # Every service, the refiner included, drained and stopped with the run.
    logs = {path.stem: path.read_text() for path in (workdir / "logs").glob("*.log")}
    services = ("episode-store", "grasp-predictor", "servo-planner", "refiner", "trainer")
    for service in (*services, "agent-kuka-01", "agent-kuka-02"):
        assert logs[service].rstrip().endswith("stopped"), service
