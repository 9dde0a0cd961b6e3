"""The model versions a RunSpec names, resolved at submission.

The generator a recipe applies (`refiner`), the version a run fine-tunes
(`start_from`), and the versions an evaluation's contenders name.
"""

from __future__ import annotations

from graspfleet.v1 import common_pb2, trainer_pb2
from models.registry import STABLE, TRAINING_WEIGHTS_FILE, Registry, read_metadata
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.trainer import recipes
from services.trainer.config import TrainerConfig
from services.trainer.recipes import GRASPGAN, Recipe


def generator(
    run_spec: trainer_pb2.RunSpec, recipe: Recipe, config: TrainerConfig, registry: Registry
) -> dict | None:
    """Resolves the generator version a recipe applies (`normalize` records it in `refiner`).

    `run_spec.refiner` names it (a version or a label); unset, it is the one
    labelled stable. Resolved at submission, like the data: a queued run refines
    with the version that was chosen when it was accepted.

    Returns:
        {"kind", "name", "version", "label"}; None for recipes that apply none.

    Raises:
        InvalidArgument: `refiner` set for a recipe that applies no generator, or
            naming another model than the configured generator.
        NotFound: the requested version or label does not exist.
        FailedPrecondition: no `refiner` given and the generator has no version, or
            none labelled stable; the message says which recipe to run or which
            version to promote.
    """
    wanted = run_spec.refiner
    requested = bool(wanted.name or wanted.version or wanted.label)
    if not recipe.refiner:
        if requested:
            raise InvalidArgument(
                f"recipe {recipe.name} applies no generator; leave refiner unset "
                "(it is for the GraspGAN-refined and RCAN recipes)"
            )
        return None
    name = config.generator_model_name(recipe.refiner)
    if wanted.name and wanted.name != name:
        raise InvalidArgument(
            f"refiner.name {wanted.name!r}: this trainer's {recipe.refiner} generator is "
            f"model {name!r}; leave the name empty or use that one"
        )
    if wanted.version or wanted.label:
        version = resolve_version(registry, name, wanted, "generator", "refiner")
        return {"kind": recipe.refiner, "name": name, "version": version, "label": wanted.label}
    if not recipes.refiner_available(registry, name):
        versions = registry.version_numbers(name)
        producer = recipes.GENERATOR_RECIPES[recipe.refiner]
        use = (
            "refine its simulated images"
            if recipe.refiner == GRASPGAN
            else "canonicalize the held-out real images it is validated on"
        )
        what = f"recipe {recipe.name} ({recipe.paper_name}) needs the refiner's {recipe.refiner}"
        if not versions:
            raise FailedPrecondition(
                f"{what} generator to {use}, and model {name!r} has no published version: run "
                f"recipe {producer} first, then promote its version (graspfleet models promote "
                f"<version> --model {name})"
            )
        raise FailedPrecondition(
            f"{what} generator to {use}: model {name!r} has versions {versions} but none "
            f"labelled stable; promote one (graspfleet models promote {versions[-1]} --model "
            f"{name})"
        )
    version = registry.labels(name)[STABLE]
    return {"kind": recipe.refiner, "name": name, "version": version, "label": STABLE}


def applied_generator(normalized: trainer_pb2.RunSpec, recipe: Recipe) -> dict | None:
    """The generator a normalized spec applies (resolved by `normalize`), for the job file.

    Returns:
        {"kind", "name", "version", "label"}; None for recipes that apply none.
    """
    if not recipe.refiner:
        return None
    ref = normalized.refiner
    return {"kind": recipe.refiner, "name": ref.name, "version": ref.version, "label": ref.label}


def start_version(spec: trainer_pb2.RunSpec, recipe: Recipe, registry: Registry) -> int:
    """The version of `spec.model_name` a fine-tuning run starts from (`start_from`).

    Its network must be the one the run trains: the same profile, batch norm and
    DANN head (the weights load layer by layer); a scene head the version has and
    the run does not train is left out, one the run trains and the version lacks
    cannot be loaded.

    Raises:
        InvalidArgument: `start_from` on a recipe that trains a generator, or naming
            another model than the one the run publishes.
        NotFound: no such version or label.
        FailedPrecondition: the version's network is not the run's, or it was
            published without its training weights.
    """
    wanted = spec.start_from
    if recipe.is_generator:
        raise InvalidArgument(
            f"start_from: {recipe.name} trains a generator; only grasp recipes fine-tune"
        )
    if wanted.name and wanted.name != spec.model_name:
        raise InvalidArgument(
            f"start_from.name {wanted.name!r}: a run fine-tunes a version of the model it "
            f"publishes, {spec.model_name!r}; leave start_from.name empty"
        )
    if not (wanted.version or wanted.label):
        raise InvalidArgument("start_from: give a version number or a label")
    version = resolve_version(registry, spec.model_name, wanted, "model", "start_from")
    folder = registry.folder(spec.model_name) / str(version)
    if not (folder / TRAINING_WEIGHTS_FILE).is_file():
        raise FailedPrecondition(
            f"start_from: {spec.model_name}:{version} was published before versions carried "
            "their training weights; start from a version published since, or from none"
        )
    network = read_metadata(folder).get("model", {})
    trains = {
        "profile": spec.params.profile,
        "dbn": recipe.dbn,
        "dann": recipe.dann,
    }
    differs = {k: (network.get(k), v) for k, v in trains.items() if network.get(k) != v}
    if spec.params.weights.get("scene", 0.0) > 0 and not network.get("scene_head"):
        differs["scene_head"] = (False, True)
    if differs:
        what = ", ".join(f"{k} {old!r} (the run: {new!r})" for k, (old, new) in differs.items())
        raise FailedPrecondition(
            f"start_from: {spec.model_name}:{version} is another network than {recipe.name} "
            f"trains here: {what}; start from a version of the same network"
        )
    return version


def resolve_version(
    registry: Registry, name: str, wanted: common_pb2.ModelRef, what: str, field: str
) -> int:
    """The published version of model `name` that `wanted` names by number or label.

    Args:
        registry: Where the versions are published.
        name: The model.
        wanted: A version number, a label, or both (they must agree).
        what: What the model is, in messages ("generator", "model").
        field: The request field `wanted` came from, in messages.

    Raises:
        NotFound: no such version, or no version carries the label.
        InvalidArgument: the version and the label name different versions.
    """
    versions = registry.version_numbers(name)
    if wanted.label:
        labels = registry.labels(name)
        if wanted.label not in labels:
            raise NotFound(
                f"{what} {name!r} has no version labelled {wanted.label!r}; labels: "
                f"{sorted(labels) or 'none'}"
            )
        version = labels[wanted.label]
        if wanted.version and wanted.version != version:
            raise InvalidArgument(
                f"{field} asks for {name}:{wanted.version} and label {wanted.label!r}, which is "
                f"version {version}; give one of the two"
            )
    else:
        version = int(wanted.version)
    if version not in versions:
        raise NotFound(f"{what} {name!r} has no version {version}; published: {versions or 'none'}")
    return version
