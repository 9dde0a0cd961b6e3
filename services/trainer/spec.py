"""Checking a RunSpec and filling in its defaults, so a stored run shows what it really does."""

from __future__ import annotations

import math
import re
from pathlib import Path

from graspfleet.v1 import common_pb2, trainer_pb2
from models.grasp_success import profiles
from models.registry import Registry
from services.common.errors import FailedPrecondition, InvalidArgument
from services.trainer import recipes, versions
from services.trainer.config import BACKENDS, TrainerConfig
from services.trainer.recipes import GRASPGAN, RCAN, Recipe

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RUN_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
DANN_WEIGHT = {"dann": "factor of the reversed domain gradient (DANN recipes), default 0.1"}
SCENE_WEIGHT = {
    "scene": "auxiliary scene loss on the simulated samples' masks (grasp recipes that use sim "
    "episodes, which must then be collected with render_masks), default 0: off"
}
# The loss weights of the generator recipes: GraspGANConfig's and RCANSpec's fields, where their
# defaults are (models/generators/graspgan.py, rcan.py); named here so the trainer needs no TensorFlow.
GRASPGAN_LOSS_WEIGHTS = {
    "lambda_g": "G's LSGAN loss in equation (1)",
    "lambda_d": "D's LSGAN loss in equation (2)",
    "lambda_tg": "C's task loss on refined sim samples, training G",
    "lambda_td": "C's task loss, training C",
    "lambda_c": "the content loss in equation (1)",
    "pmse_weight": "pairwise MSE of refined vs sim images in the content loss",
    "mask_weight": "mask L1 in the content loss",
    "feature_weight": "task-feature loss (C's last conv layer) in the content loss",
}
GRASPGAN_WEIGHTS = {
    **GRASPGAN_LOSS_WEIGHTS,
    "real_task": "1: C's task loss uses the real labels (Table III, default); "
    "0: the real images' labels are not used (Table II)",
    **DANN_WEIGHT,
}
RCAN_WEIGHTS = {
    "image_weight": "L1 between G's image and the canonical render",
    "mask_weight": "mask cross-entropy",
    "gan_weight": "pix2pix's conditional LSGAN term (0: no discriminator)",
}
MAX_DANN_WEIGHT = 100.0
MAX_LOSS_WEIGHT = 1000.0
REFINER_PROFILES = ("tiny", "default", "paper")
MAX_DESCRIPTION = 2000


def known_weights(recipe: Recipe) -> dict[str, str]:
    """The loss weights `recipe` understands, with what each one weighs."""
    if recipe.trains == GRASPGAN:
        return GRASPGAN_WEIGHTS
    if recipe.trains == RCAN:
        return RCAN_WEIGHTS
    return {**(DANN_WEIGHT if recipe.dann else {}), **(SCENE_WEIGHT if recipe.uses_sim else {})}


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
    spec: trainer_pb2.RunSpec,
    config: TrainerConfig,
    backends: tuple[str, ...] = BACKENDS,
    registry: Registry | None = None,
) -> tuple[trainer_pb2.RunSpec, Recipe]:
    """A copy of `spec` with every default filled in, and its recipe.

    Args:
        spec: The RunSpec as submitted.
        config: Defaults and limits.
        backends: The backends this trainer can run jobs on.
        registry: Where the generators a recipe needs are published; the
            config's model base when None.

    Raises:
        InvalidArgument: an unknown recipe, profile, backend or weight, a size,
            rate or fraction out of range, or a model name the recipe cannot
            publish to; the message names the field.
        FailedPrecondition: the recipe needs a generator that has no stable
            version, the backend is known but not configured, or `start_from`
            names a version whose network is not the run's.
        NotFound: `refiner` or `start_from` names a version or label that does not exist.
    """
    spec = trainer_pb2.RunSpec.FromString(spec.SerializeToString())
    recipe = _recipe(spec.recipe)
    if spec.HasField("evaluation"):
        raise InvalidArgument(
            f"evaluation is set, and recipe {recipe.name} trains a model: an evaluation is a "
            "run of recipe EVALUATION; leave evaluation unset to train"
        )
    applied = versions.generator(
        spec, recipe, config, registry or Registry(Path(config.model_base))
    )
    if applied:  # the stored run shows the generator version it applies
        spec.refiner.CopyFrom(
            common_pb2.ModelRef(
                name=applied["name"], version=applied["version"], label=applied["label"]
            )
        )
    _model_name(spec, recipe, config)
    backend_and_description(spec, config, backends)
    _params(spec.params, recipe, config)
    _data(spec.data, recipe, config)
    if spec.HasField("start_from"):
        start = versions.start_version(spec, recipe, registry or Registry(Path(config.model_base)))
        spec.start_from.CopyFrom(
            common_pb2.ModelRef(name=spec.model_name, version=start, label=spec.start_from.label)
        )
    if recipe.is_generator:
        if spec.gate.max_regression:
            raise InvalidArgument(
                f"gate.max_regression compares grasp accuracies; {recipe.name} is gated on scene "
                "preservation instead (the trainer's generator_min_mask_accuracy and "
                "generator_min_mask_iou): leave it 0"
            )
        if not spec.HasField("gate"):
            spec.gate.enabled = True
    elif not spec.HasField("gate"):
        spec.gate.CopyFrom(
            trainer_pb2.GateSpec(enabled=True, max_regression=config.gate_max_regression)
        )
    _finite("gate.max_regression", spec.gate.max_regression)
    if not -1.0 <= spec.gate.max_regression <= 1.0:
        raise InvalidArgument(
            f"gate.max_regression={spec.gate.max_regression}: accuracy differences lie in [-1, 1]"
        )
    return spec, recipe


def backend_and_description(
    spec: trainer_pb2.RunSpec, config: TrainerConfig, backends: tuple[str, ...]
) -> None:
    """Fills in the default backend and checks it and the description (every kind of run).

    Raises:
        InvalidArgument: an unknown backend or a description that is too long.
        FailedPrecondition: the backend is known but not configured on this trainer.
    """
    spec.backend = spec.backend or config.default_backend
    if spec.backend not in BACKENDS:
        raise InvalidArgument(f"backend {spec.backend!r} is unknown: use one of {BACKENDS}")
    if spec.backend not in backends:
        raise FailedPrecondition(
            f"backend {spec.backend!r} is not configured on this trainer (available: {backends})"
        )
    if len(spec.description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION} characters")


def _recipe(value: int) -> Recipe:
    if value == trainer_pb2.RECIPE_UNSPECIFIED:
        raise InvalidArgument(f"recipe is required: one of {recipes.short_names()}")
    if value not in recipes.RECIPES:
        raise InvalidArgument(f"recipe={value} is not a known recipe: {recipes.short_names()}")
    return recipes.RECIPES[value]


def _model_name(spec: trainer_pb2.RunSpec, recipe: Recipe, config: TrainerConfig) -> None:
    generators = {config.graspgan_model_name, config.rcan_model_name}
    if recipe.is_generator:
        own = config.generator_model_name(recipe.trains)
        spec.model_name = spec.model_name or own
        if spec.model_name != own:
            # The recipes that apply a generator look for it under this one name.
            raise InvalidArgument(
                f"model_name {spec.model_name!r}: {recipe.name} publishes the {recipe.trains} "
                f"generator as {own!r} (the trainer's {recipe.trains}_model_name); leave "
                "model_name empty"
            )
        return
    default = config.rcan_grasp_model_name if recipe.canonical else config.default_model_name
    spec.model_name = spec.model_name or default
    if not MODEL_NAME.match(spec.model_name) or spec.model_name.isdigit():
        raise InvalidArgument(
            f"model_name {spec.model_name!r}: use up to 64 letters, digits, '.', '_' or '-', "
            "not only digits"
        )
    if spec.model_name in generators:
        raise InvalidArgument(
            f"model_name {spec.model_name!r} is a refiner generator's; a grasp model needs "
            "another name"
        )


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
    params.learning_rate = params.learning_rate or (
        config.default_generator_learning_rate
        if recipe.is_generator
        else config.default_learning_rate
    )
    if not 0 < params.learning_rate <= 1:
        raise InvalidArgument(f"params.learning_rate={params.learning_rate} must be in (0, 1]")
    params.profile = params.profile or "default"
    known = REFINER_PROFILES if recipe.is_generator else tuple(sorted(profiles.PROFILES))
    if params.profile not in known:
        raise InvalidArgument(
            f"params.profile {params.profile!r} is unknown for {recipe.name}: use one of {known}"
        )
    weights = known_weights(recipe)
    for key, value in params.weights.items():
        if key not in weights:
            if key in DANN_WEIGHT:
                raise InvalidArgument(
                    f"params.weights['dann'] is set but {recipe.name} has no DANN"
                )
            raise InvalidArgument(
                f"params.weights[{key!r}] is not a weight of {recipe.name}: known {weights}"
            )
        _finite(f"params.weights[{key!r}]", value)
        limit = MAX_DANN_WEIGHT if key == "dann" else MAX_LOSS_WEIGHT
        if not 0 <= value <= limit:
            raise InvalidArgument(f"params.weights[{key!r}] must be in [0, {limit}]")
    if params.weights.get("real_task", 1.0) not in (0.0, 1.0):
        raise InvalidArgument("params.weights['real_task'] is 1 (use real labels) or 0 (do not)")


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
    if not recipe.uses_real and data.robot_ids:
        raise InvalidArgument(
            f"data.robot_ids selects real episodes, and recipe {recipe.name} uses none"
        )
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
