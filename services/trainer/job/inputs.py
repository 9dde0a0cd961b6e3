"""The job's inputs (`job.json`): what the trainer resolved for a run at submission, checked both ways.

The trainer writes them when it accepts a run and the job reads them when it
starts, possibly in another process, pod or release of graspfleet, so the file
is validated on the way out and on the way in: a field the job does not know,
one it misses or one of the wrong type is an error that names the field. The
file carries a format version; a job refuses any other (older run folders are
resubmitted, not migrated).

This module is shared with the service side and must stay free of TensorFlow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from google.protobuf import json_format

from graspfleet.v1 import trainer_pb2
from services.trainer import recipes

# Bumped whenever a field changes meaning, appears or goes; written as "format".
FORMAT_VERSION = 1
FORMAT_KEY = "format"


class JobInputsError(ValueError):
    """A job file this version cannot run; the message names the field and what is wrong."""


@dataclass(frozen=True)
class SceneGate:
    """The generator gate's thresholds, the trainer's settings when the run was accepted.

    Attributes:
        min_mask_accuracy: Least share of held-out simulated pixels whose mask class
            the generator keeps, in [0, 1].
        min_mask_iou: Least IoU of each scene class (`gate.SCENE_CLASSES`), in [0, 1].
    """

    min_mask_accuracy: float
    min_mask_iou: float

    def __post_init__(self) -> None:
        for name in ("min_mask_accuracy", "min_mask_iou"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise JobInputsError(f"scene_gate.{name}={value!r}: give a number in [0, 1]")


@dataclass(frozen=True)
class JobInputs:
    """What a job runs: the accepted run and what the trainer resolved for it.

    The normalized RunSpec says what to do: the recipe, the model name, the
    training parameters, the gate, the generator version a refining recipe
    applies, an evaluation's contenders with their versions resolved. The other
    fields are what the spec cannot say. A training's episodes lie beside the
    file in the run folder (`files.TRAIN_EPISODES`, `files.VALIDATION_EPISODES`).

    Attributes:
        run_id: The run's id; an evaluation's id on the sim-farm too.
        spec: The normalized RunSpec, recorded with the version a run publishes.
        store_data_dir: The episode store's data folder as the job sees it (absolute).
        model_base: The model repository as the job sees it (absolute).
        selection: How the training episodes were chosen (`Selection.description`),
            recorded verbatim with the model; empty for an evaluation.
        scene_gate: The generator gate's thresholds: set for the generator recipes,
            None for every other.
    """

    run_id: str
    spec: trainer_pb2.RunSpec
    store_data_dir: str
    model_base: str
    selection: Mapping[str, object] = field(default_factory=dict)
    scene_gate: SceneGate | None = None

    def __post_init__(self) -> None:
        for name in ("run_id", "store_data_dir", "model_base"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise JobInputsError(f"{name}={getattr(self, name)!r}: give a non-empty string")
        for name in ("store_data_dir", "model_base"):
            if not Path(getattr(self, name)).is_absolute():
                raise JobInputsError(
                    f"{name}={getattr(self, name)!r}: give an absolute path (the job may run "
                    "in another working directory)"
                )
        if not isinstance(self.spec, trainer_pb2.RunSpec):
            raise JobInputsError(f"spec: a RunSpec, not {type(self.spec).__name__}")
        if not isinstance(self.selection, Mapping):
            raise JobInputsError(f"selection: a JSON object, not {type(self.selection).__name__}")
        if self.scene_gate is not None and not isinstance(self.scene_gate, SceneGate):
            raise JobInputsError(f"scene_gate: a SceneGate, not {type(self.scene_gate).__name__}")
        if self.is_evaluation:
            generator = False
        elif self.spec.recipe in recipes.RECIPES:
            generator = recipes.RECIPES[self.spec.recipe].is_generator
        else:
            raise JobInputsError(f"spec.recipe={self.spec.recipe}: not a recipe this job runs")
        if generator != (self.scene_gate is not None):
            need = "needs a scene_gate" if generator else "takes no scene_gate"
            raise JobInputsError(f"recipe {self.recipe_name} {need}")

    @property
    def is_evaluation(self) -> bool:
        """A closed-loop evaluation (recipe EVALUATION) rather than a training."""
        return self.spec.recipe == trainer_pb2.RECIPE_EVALUATION

    @property
    def recipe_name(self) -> str:
        """The recipe's enum name, "RECIPE_DANN", as the model's metadata records it."""
        return trainer_pb2.Recipe.Name(self.spec.recipe)

    def spec_json(self) -> dict:
        """The RunSpec as JSON (proto3 JSON mapping), as the model's metadata records it."""
        return json_format.MessageToDict(self.spec)

    def to_json(self) -> str:
        """The inputs as the text of `job.json`, with the format version."""
        return json.dumps(
            {
                FORMAT_KEY: FORMAT_VERSION,
                "run_id": self.run_id,
                "spec": self.spec_json(),
                "store_data_dir": self.store_data_dir,
                "model_base": self.model_base,
                "selection": dict(self.selection),
                "scene_gate": None
                if self.scene_gate is None
                else {
                    "min_mask_accuracy": self.scene_gate.min_mask_accuracy,
                    "min_mask_iou": self.scene_gate.min_mask_iou,
                },
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> JobInputs:
        """The inputs `to_json` wrote.

        Raises:
            JobInputsError: the text is not JSON, is of another format version, or
                has an unknown, missing or mistyped field; the message names it.
        """
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise JobInputsError(f"not JSON: {err}") from None
        if not isinstance(raw, dict):
            raise JobInputsError(f"a JSON object, not {type(raw).__name__}")
        if raw.get(FORMAT_KEY) != FORMAT_VERSION:
            raise JobInputsError(
                f"{FORMAT_KEY}={raw.get(FORMAT_KEY)!r}: this job reads format {FORMAT_VERSION}; "
                "a run folder written by another release of the trainer cannot be run by this "
                "one: submit the run again"
            )
        _keys(raw, {FORMAT_KEY, *(f.name for f in fields(cls))}, "")
        scene_gate = _typed(raw, "scene_gate", (dict, type(None)))
        if scene_gate is not None:
            _keys(scene_gate, {f.name for f in fields(SceneGate)}, "scene_gate.")
            scene_gate = SceneGate(
                min_mask_accuracy=_number(scene_gate, "min_mask_accuracy", "scene_gate."),
                min_mask_iou=_number(scene_gate, "min_mask_iou", "scene_gate."),
            )
        spec = trainer_pb2.RunSpec()
        try:
            json_format.ParseDict(_typed(raw, "spec", dict), spec)
        except json_format.ParseError as err:
            raise JobInputsError(f"spec: {err}") from None
        return cls(
            run_id=_typed(raw, "run_id", str),
            spec=spec,
            store_data_dir=_typed(raw, "store_data_dir", str),
            model_base=_typed(raw, "model_base", str),
            selection=_typed(raw, "selection", dict),
            scene_gate=scene_gate,
        )


def _keys(raw: dict, expected: set[str], where: str) -> None:
    unknown = sorted(set(raw) - expected)
    if unknown:
        raise JobInputsError(f"unknown field {where}{unknown[0]}; expected {sorted(expected)}")
    missing = sorted(expected - set(raw))
    if missing:
        raise JobInputsError(f"missing field {where}{missing[0]}")


def _typed(raw: dict, key: str, types: type | tuple[type, ...]):
    value = raw[key]
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise JobInputsError(f"{key}: {names} expected, not {type(value).__name__}")
    return value


def _is_number(value: object) -> bool:
    # bool is an int to Python, but `true` is no threshold.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(raw: dict, key: str, where: str) -> float:
    value = raw[key]
    if not _is_number(value):
        raise JobInputsError(f"{where}{key}: a number expected, not {value!r}")
    return float(value)
