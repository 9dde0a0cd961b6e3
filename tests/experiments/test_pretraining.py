"""The pretraining protocol trains each row as it says and decides by the rule it wrote down."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.pretraining import __main__ as pretraining
from experiments.pretraining.protocol import ROWS, VALIDATION_ARMS, Settings
from experiments.sim2real.data import REAL_ARM
from graspfleet.v1 import common_pb2, episode_store_pb2
from robots.inventory import parse_arm


def _episodes(name: str, count: int) -> list[episode_store_pb2.EpisodeSummary]:
    return [episode_store_pb2.EpisodeSummary(episode_id=f"{name}-{i:04d}") for i in range(count)]


def test_the_collections_are_plain_sim_and_the_real_arm_on_real_train_objects():
    specs = pretraining.collections(Settings())
    assert specs["sim"].domain == common_pb2.DOMAIN_SIM and specs["sim"].object_set == "train"
    assert specs["sim-validation"].object_set == "sim-test"
    arm = parse_arm(specs["real"].arm_config_yaml, "real")
    assert specs["real"].arm_config_yaml == REAL_ARM.read_text()
    assert arm.driver == "proxy-real" and arm.world.object_set == "real-train"
    assert len({s.seed for s in specs.values()}) == len(specs)


def test_no_validation_arm_grasps_the_real_test_objects():
    for path in VALIDATION_ARMS.values():
        arm = parse_arm(path.read_text(), path.stem)
        assert arm.driver == "proxy-real"
        assert arm.world.object_set != "real-test"


class _Recorded:
    """Stages that record each model's spec and initial weights instead of training."""

    def __init__(self) -> None:
        self.runs: dict[str, dict] = {}

    def run(self, name: str, settings: dict, work) -> dict:
        self.runs[name] = settings
        return {"weights": f"{name}.weights.h5", "path": name, "metrics": {}}


def test_sim_then_real_starts_from_sim_only_of_its_seed_and_real_only_takes_its_steps():
    settings = Settings(grasp_steps=100, seeds=(0, 1))
    data = {
        "sim": _episodes("sim", 4),
        "sim-validation": _episodes("simval", 2),
        "real": _episodes("real", 4),
        "real-validation": _episodes("realval", 2),
    }
    stages = _Recorded()
    for row in ROWS:
        for seed in settings.seeds:
            pretraining.grasp_model(row, seed, data, settings, Path("/nowhere"), stages)
    runs = stages.runs
    assert runs["grasp-sim-then-real-s1"]["initial"] == "grasp-sim-only-s1.weights.h5"
    assert runs["grasp-real-only-s0"]["initial"] is None
    assert "steps=200" in runs["grasp-real-only-s0"]["spec"]
    assert "steps=100" in runs["grasp-sim-then-real-s0"]["spec"]
    assert "sim_fraction=0.0" in runs["grasp-sim-then-real-s0"]["spec"]
    assert runs["grasp-sim-then-real-s0"]["data"][0][1] == "real-0000"
    assert runs["grasp-sim-only-s0"]["data"][1][1] == "simval-0000"


def _arm(successes: dict[str, int]) -> dict:
    return {"rows": {row: {"pooled": {"successes": n}} for row, n in successes.items()}}


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        (
            {"sim-then-real": 60, "real-only": 40},
            {"sim-then-real": 30, "real-only": 40},
            "sim-then",
        ),
        (
            {"sim-then-real": 40, "real-only": 60},
            {"sim-then-real": 30, "real-only": 20},
            "real-only",
        ),
        ({"sim-then-real": 50, "real-only": 50}, {"sim-then-real": 9, "real-only": 9}, "real-only"),
    ],
)
def test_the_decision_takes_pooled_successes_over_both_arms(first, second, winner):
    result = {"arms": {"a": _arm(first), "b": _arm(second)}}
    assert pretraining.decision(result).startswith(winner)


def test_no_decision_before_both_rows_are_scored():
    result = {"arms": {"a": _arm({"sim-then-real": 60, "sim-only": 1})}}
    assert pretraining.decision(result).startswith("undecided")
