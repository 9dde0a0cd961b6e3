"""Checking a RunSpec and filling in its defaults, so a stored run shows what it really does."""

from __future__ import annotations

import math
import re

from graspfleet.v1 import common_pb2, trainer_pb2
from services.common.errors import FailedPrecondition, InvalidArgument
from services.grasp_predictor import profiles
from services.trainer import recipes
from services.trainer.config import BACKENDS, TrainerConfig
from services.trainer.recipes import Recipe

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RUN_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
# Loss weights a recipe understands; the refiner recipes will add lambda_g, lambda_c, ...
WEIGHTS = {"dann": "factor of the reversed domain gradient (DANN recipes), default 0.1"}
MAX_DANN_WEIGHT = 100.0
MAX_DESCRIPTION = 2000


def check_run_id(run_id: str) -> None:
    """Refuses ids that could not name a Kubernetes Job or a folder."""
    if not RUN_ID.match(run_id):
        raise InvalidArgument(
            f"run_id {run_id!r}: use 1-40 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(f"{name}={value} is not a finite number")


def normalize(
    spec: trainer_pb2.RunSpec, config: TrainerConfig, backends: tuple[str, ...] = BACKENDS
) -> tuple[trainer_pb2.RunSpec, Recipe]:
    """A copy of `spec` with every default filled in, and its recipe.

    Args:
        spec: The RunSpec as submitted.
        config: Defaults and limits.
        backends: The backends this trainer can run jobs on.

    Raises:
        InvalidArgument: an unknown recipe, profile, backend or weight, or a size,
            rate or fraction out of range; the message names the field.
        FailedPrecondition: the recipe needs a refiner this fleet does not have yet,
            or the backend is known but not configured.
    """
    spec = trainer_pb2.RunSpec.FromString(spec.SerializeToString())
    recipe = _recipe(spec.recipe)
    spec.model_name = spec.model_name or config.default_model_name
    if not MODEL_NAME.match(spec.model_name) or spec.model_name.isdigit():
        raise InvalidArgument(
            f"model_name {spec.model_name!r}: use up to 64 letters, digits, '.', '_' or '-', "
            "not only digits"
        )
    spec.backend = spec.backend or config.default_backend
    if spec.backend not in BACKENDS:
        raise InvalidArgument(f"backend {spec.backend!r} is unknown: use one of {BACKENDS}")
    if spec.backend not in backends:
        raise FailedPrecondition(
            f"backend {spec.backend!r} is not configured on this trainer (available: {backends})"
        )
    if len(spec.description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION} characters")
    _params(spec.params, recipe, config)
    _data(spec.data, recipe, config)
    if not spec.HasField("gate"):
        spec.gate.CopyFrom(
            trainer_pb2.GateSpec(enabled=True, max_regression=config.gate_max_regression)
        )
    _finite("gate.max_regression", spec.gate.max_regression)
    if not -1.0 <= spec.gate.max_regression <= 1.0:
        raise InvalidArgument(
            f"gate.max_regression={spec.gate.max_regression}: accuracy differences lie in [-1, 1]"
        )
    return spec, recipe


def _recipe(value: int) -> Recipe:
    if value == trainer_pb2.RECIPE_UNSPECIFIED:
        raise InvalidArgument(f"recipe is required: one of {recipes.short_names()}")
    if value not in recipes.RECIPES:
        raise InvalidArgument(f"recipe={value} is not a known recipe: {recipes.short_names()}")
    recipe = recipes.RECIPES[value]
    if recipe.refiner and not recipes.refiner_available(recipe.refiner):
        raise FailedPrecondition(
            f"recipe {recipe.name} ({recipe.paper_name}) needs the {recipe.refiner} refiner to "
            "turn simulated images into real-looking ones, and the refiner service is not "
            "built yet; use DANN or DANN_R meanwhile"
        )
    return recipe


def _params(params: trainer_pb2.TrainingParams, recipe: Recipe, config: TrainerConfig) -> None:
    params.steps = params.steps or config.default_steps
    if params.steps > config.max_steps:
        raise InvalidArgument(
            f"params.steps={params.steps} exceeds the limit of {config.max_steps}"
        )
    params.batch_size = params.batch_size or config.default_batch_size
    if not 2 <= params.batch_size <= config.max_batch_size:
        raise InvalidArgument(
            f"params.batch_size={params.batch_size} must be between 2 (batch norm needs two "
            f"samples) and {config.max_batch_size}"
        )
    _finite("params.learning_rate", params.learning_rate)
    params.learning_rate = params.learning_rate or config.default_learning_rate
    if not 0 < params.learning_rate <= 1:
        raise InvalidArgument(f"params.learning_rate={params.learning_rate} must be in (0, 1]")
    params.profile = params.profile or "default"
    if params.profile not in profiles.PROFILES:
        raise InvalidArgument(
            f"params.profile {params.profile!r} is unknown: use one of {sorted(profiles.PROFILES)}"
        )
    for key, value in params.weights.items():
        if key not in WEIGHTS:
            raise InvalidArgument(f"params.weights[{key!r}] is not a weight: known {WEIGHTS}")
        _finite(f"params.weights[{key!r}]", value)
    if "dann" in params.weights:
        if not recipe.dann:
            raise InvalidArgument(f"params.weights['dann'] is set but {recipe.name} has no DANN")
        if not 0 <= params.weights["dann"] <= MAX_DANN_WEIGHT:
            raise InvalidArgument(f"params.weights['dann'] must be in [0, {MAX_DANN_WEIGHT}]")


def _data(data: trainer_pb2.DataSelection, recipe: Recipe, config: TrainerConfig) -> None:
    for name in ("real_fraction", "validation_fraction"):
        _finite(f"data.{name}", getattr(data, name))
    if data.sim_randomization not in common_pb2.Randomization.values():
        raise InvalidArgument(f"data.sim_randomization={data.sim_randomization} is unknown")
    if not recipe.uses_sim:
        for name in ("sim_randomization", "max_sim_episodes", "object_set"):
            if getattr(data, name):
                raise InvalidArgument(
                    f"data.{name} selects simulated episodes, and recipe {recipe.name} uses none"
                )
    else:
        data.sim_randomization = data.sim_randomization or recipe.sim_randomization
    if not recipe.uses_real_labels and (data.max_real_episodes or data.real_fraction):
        raise InvalidArgument(
            f"recipe {recipe.name} trains on no real labels: max_real_episodes and "
            "real_fraction do not apply (real episodes are used for validation only)"
        )
    if data.max_real_episodes and data.real_fraction:
        raise InvalidArgument("set data.max_real_episodes or data.real_fraction, not both")
    if data.real_fraction and not 0 < data.real_fraction <= 1:
        raise InvalidArgument(f"data.real_fraction={data.real_fraction} must be in (0, 1]")
    data.validation_fraction = data.validation_fraction or config.default_validation_fraction
    if not 0 < data.validation_fraction < 1:
        raise InvalidArgument(
            f"data.validation_fraction={data.validation_fraction} must be strictly between 0 and 1"
        )
    if (
        data.HasField("since")
        and data.HasField("until")
        and data.until.ToNanoseconds() <= data.since.ToNanoseconds()
    ):
        raise InvalidArgument("data.until must be after data.since")
    if len(data.robot_ids) > 1000 or any(not r for r in data.robot_ids):
        raise InvalidArgument("data.robot_ids: at most 1000 non-empty robot ids")
