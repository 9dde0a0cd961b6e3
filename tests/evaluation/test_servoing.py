"""The servoing read off stored episodes: forced closes, raises, steps and close heights."""

from __future__ import annotations

import pytest

from graspfleet.v1 import common_pb2
from models.episodes.synthetic import sample_episode
from services.evaluation.servoing import episode_servoing, summarize

Kind = common_pb2.Command


def _episode(kinds: list[int], close_z: float, success: bool, by_model: bool):
    record = sample_episode(1, num_steps=len(kinds))
    for step, kind in zip(record.steps, kinds, strict=True):
        step.command.kind = kind
        step.ClearField("model")
    last = record.steps[-1]
    last.pose.position_m.z = close_z
    if by_model:
        last.model.name, last.model.version = "grasp_success", 3
    record.outcome.result = (
        common_pb2.GRASP_RESULT_SUCCESS if success else common_pb2.GRASP_RESULT_FAILURE
    )
    return record


def test_a_planner_close_a_forced_close_and_their_heights():
    move, close, lift = Kind.KIND_MOVE, Kind.KIND_CLOSE, Kind.KIND_RAISE
    planned = episode_servoing(_episode([move, move, close], 0.11, True, True), floor_z_m=0.10)
    forced_record = _episode([move, lift, lift, move, close], 0.16, False, False)
    forced_record.steps[0].model.name = "grasp_success"  # the planner drove the moves
    forced = episode_servoing(forced_record, floor_z_m=0.10)
    random = episode_servoing(_episode([move, move, close], 0.11, False, False), floor_z_m=0.10)
    assert not random.forced_close  # no planner to overrule
    assert (planned.forced_close, planned.raises, planned.steps) == (False, 0, 3)
    assert planned.close_height_cm == pytest.approx(1.0)
    assert (forced.forced_close, forced.raises, forced.steps) == (True, 2, 5)
    assert forced.close_height_cm == pytest.approx(6.0)
    summary = summarize([planned, forced])
    assert summary["all"]["forced_close"] == 0.5 and summary["all"]["raises_per_episode"] == 1.0
    assert summary["failures"]["close_height_cm"]["median"] == pytest.approx(6.0)
    assert summary["successes"]["episodes"] == 1 and summary["failures"]["steps_per_episode"] == 5
    assert summarize([])["all"] == {"episodes": 0}


def test_a_contenders_servoing_reaches_its_collection_plan_and_its_fingerprint():
    from services.evaluation.closed_loop import Contender, EvaluationSpec, collection_spec
    from services.sim_farm.plan import plan_collection
    from tests.evaluation.test_closed_loop import ARM

    spec = EvaluationSpec.from_file("s1", ARM, scenes=4, seed=3, shards=2)
    default = plan_collection("c", collection_spec(spec, Contender("m", "cem", 1)))
    tuned = plan_collection(
        "c", collection_spec(spec, Contender("m", "cem", 1, close_ratio=0.7, raise_ratio=0.3))
    )
    assert (tuned.close_ratio, tuned.raise_ratio) == pytest.approx((0.7, 0.3))
    assert (default.close_ratio, default.raise_ratio) == (0.0, 0.0)
    assert tuned.fingerprint() != default.fingerprint()
    # A plan without servoing settings fingerprints as plans did before they existed.
    import dataclasses
    import hashlib
    import json

    data = dataclasses.asdict(default)
    for name in ("collection_id", "skip_stored", "close_ratio", "raise_ratio"):
        del data[name]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert default.fingerprint() == hashlib.sha256(text.encode()).hexdigest()[:16]
    with pytest.raises(ValueError, match="no servoing"):
        Contender("r", "random", close_ratio=0.5)
