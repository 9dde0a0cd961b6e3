"""The job's inputs: `job.json` round-trips, and a wrong one is refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graspfleet.v1 import common_pb2, trainer_pb2
from services.trainer.job import files
from services.trainer.job import main as job_main
from services.trainer.job.inputs import FORMAT_VERSION, JobInputs, JobInputsError, SceneGate


def _inputs(recipe: int = trainer_pb2.RECIPE_DANN, **changes) -> JobInputs:
    spec = trainer_pb2.RunSpec(recipe=recipe, model_name="grasp_success")
    spec.params.steps = 24
    spec.params.weights["dann"] = 0.25
    spec.refiner.CopyFrom(common_pb2.ModelRef(name="graspgan", version=3, label="stable"))
    fields = {
        "run_id": "run-0123456789ab",
        "spec": spec,
        "store_data_dir": "/data/store",
        "model_base": "/data/models",
        "selection": {"seed": 7, "real": {"train": 40, "validation": 10}},
        "scene_gate": None,
    }
    return JobInputs(**(fields | changes))


def _raw(inputs: JobInputs) -> dict:
    return json.loads(inputs.to_json())


@pytest.mark.parametrize(
    "inputs",
    [
        _inputs(),
        _inputs(
            trainer_pb2.RECIPE_GRASPGAN_GENERATOR,
            scene_gate=SceneGate(min_mask_accuracy=0.9, min_mask_iou=0.5),
        ),
        _inputs(trainer_pb2.RECIPE_EVALUATION, selection={}),
    ],
    ids=["grasp", "generator", "evaluation"],
)
def test_the_inputs_read_back_as_written(inputs):
    assert JobInputs.from_json(inputs.to_json()) == inputs
    assert _raw(inputs)["format"] == FORMAT_VERSION


def test_the_model_metadata_keeps_the_recipe_name_and_the_spec_as_json():
    inputs = _inputs()
    assert inputs.recipe_name == "RECIPE_DANN" and not inputs.is_evaluation
    assert inputs.spec_json()["params"]["weights"] == {"dann": 0.25}


@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        (lambda raw: raw.update(extra=1), "unknown field extra"),
        (lambda raw: raw.pop("model_base"), "missing field model_base"),
        (lambda raw: raw.update(run_id=12), "run_id: str expected, not int"),
        (lambda raw: raw.update(selection=[1]), "selection: dict expected, not list"),
        (lambda raw: raw.update(scene_gate="strict"), "scene_gate: dict or NoneType expected"),
        (lambda raw: raw["spec"].update(modelNam="x"), "spec: "),
        (lambda raw: raw["spec"].update(recipe="RECIPE_NOPE"), "spec: "),
        (lambda raw: raw.update(store_data_dir="var/store"), "store_data_dir='var/store'"),
        (lambda raw: raw.update(run_id=""), "run_id=''"),
        (lambda raw: raw.pop("format"), "format=None: this job reads format 1"),
        (lambda raw: raw.update(format=FORMAT_VERSION + 1), f"format={FORMAT_VERSION + 1}"),
    ],
)
def test_a_wrong_job_file_is_refused_with_the_field_named(spoil, named):
    raw = _raw(_inputs())
    spoil(raw)
    with pytest.raises(JobInputsError, match=named.replace("(", r"\(")):
        JobInputs.from_json(json.dumps(raw))


@pytest.mark.parametrize(
    ("scene_gate", "named"),
    [
        ({"min_mask_accuracy": 0.9}, "missing field scene_gate.min_mask_iou"),
        ({"min_mask_accuracy": 0.9, "min_mask_iou": 0.5, "x": 1}, "unknown field scene_gate.x"),
        ({"min_mask_accuracy": True, "min_mask_iou": 0.5}, "scene_gate.min_mask_accuracy: a num"),
        ({"min_mask_accuracy": 0.9, "min_mask_iou": 1.5}, r"scene_gate.min_mask_iou=1.5"),
    ],
)
def test_a_wrong_scene_gate_is_refused_with_the_field_named(scene_gate, named):
    raw = _raw(
        _inputs(
            trainer_pb2.RECIPE_RCAN_GENERATOR,
            scene_gate=SceneGate(min_mask_accuracy=0.9, min_mask_iou=0.5),
        )
    )
    raw["scene_gate"] = scene_gate
    with pytest.raises(JobInputsError, match=named):
        JobInputs.from_json(json.dumps(raw))


def test_the_scene_gate_goes_with_the_generator_recipes_only():
    with pytest.raises(JobInputsError, match="RECIPE_GRASPGAN_GENERATOR needs a scene_gate"):
        _inputs(trainer_pb2.RECIPE_GRASPGAN_GENERATOR)
    with pytest.raises(JobInputsError, match="RECIPE_DANN takes no scene_gate"):
        _inputs(scene_gate=SceneGate(min_mask_accuracy=0.9, min_mask_iou=0.5))
    with pytest.raises(JobInputsError, match="not a recipe"):
        _inputs(trainer_pb2.RECIPE_UNSPECIFIED)


def test_not_json_is_refused():
    with pytest.raises(JobInputsError, match="not JSON"):
        JobInputs.from_json("{")
    with pytest.raises(JobInputsError, match="a JSON object, not list"):
        JobInputs.from_json("[]")


def test_a_job_whose_file_is_wrong_ends_failed_with_the_field_named(tmp_path: Path):
    raw = _raw(_inputs())
    raw["gate"] = {"enabled": True}  # a field of an older job.json
    (tmp_path / files.JOB_FILE).write_text(json.dumps(raw))
    assert job_main.run(tmp_path) == 1
    result = files.read_result(tmp_path)
    assert result.state == "FAILED" and "unknown field gate" in result.message


def test_a_job_without_its_file_says_so(tmp_path: Path, capsys):
    assert job_main.run(tmp_path) == 2
    assert files.JOB_FILE in capsys.readouterr().err
    assert files.read_result(tmp_path) is None
