"""The paper's training regimes as one table: what each recipe trains, on what, and how.

A recipe fixes the regime (DBN, DANN, the SIM share of every batch), the
default randomization of the simulated episodes it draws, the generator it
applies to them (GraspGAN refines simulated images, RCAN canonicalizes real
ones for validation) and what it publishes: a grasp-success model or one of
the refiner's generators. Everything else (how much real data, which robots,
steps, batch size) comes from the RunSpec.
"""

from __future__ import annotations

from dataclasses import dataclass

from graspfleet.v1 import common_pb2, trainer_pb2
from models.registry import STABLE, Registry

NONE = common_pb2.RANDOMIZATION_NONE
VISUAL = common_pb2.RANDOMIZATION_VISUAL
# What a recipe trains and publishes; the generator kinds are models.generators.export.KINDS.
GRASP = "grasp"
GRASPGAN = "graspgan"
RCAN = "rcan"
# The recipe that publishes each generator, named when a recipe needs one that is missing.
GENERATOR_RECIPES = {GRASPGAN: "GRASPGAN_GENERATOR", RCAN: "RCAN_GENERATOR"}


@dataclass(frozen=True)
class Recipe:
    """One training regime.

    Attributes:
        value: The `trainer_pb2.Recipe` enum value.
        paper_name: What the GraspGAN paper calls it (Tables II and III).
        sim_fraction: Expected share of SIM samples in every batch (0: real only, 1: sim only).
        dbn: Domain-specific batch norm.
        dann: Domain-adversarial loss on the last conv layer.
        sim_randomization: Randomization of the simulated episodes it uses by default.
        refiner: The published generator it applies ("graspgan": to the simulated
            training images; "rcan": to the held-out real images); empty when none.
        trains: What it trains and publishes: GRASP (a grasp-success model),
            GRASPGAN or RCAN (that generator).
        canonical: Trains the grasp model on the simulator's canonical renders (RCAN).
    """

    value: int
    paper_name: str
    sim_fraction: float
    dbn: bool = False
    dann: bool = False
    sim_randomization: int = NONE
    refiner: str = ""
    trains: str = GRASP
    canonical: bool = False

    @property
    def name(self) -> str:
        """The enum name without its prefix: "DANN_R"."""
        return trainer_pb2.Recipe.Name(self.value).removeprefix("RECIPE_")

    @property
    def uses_sim(self) -> bool:
        """Trains on simulated episodes."""
        return self.sim_fraction > 0

    @property
    def uses_real_labels(self) -> bool:
        """Trains on labeled real episodes."""
        return self.sim_fraction < 1

    @property
    def is_generator(self) -> bool:
        """Trains one of the refiner's generators rather than a grasp model."""
        return self.trains != GRASP

    @property
    def uses_real(self) -> bool:
        """Reads real episodes; only the RCAN generator learns from simulation alone.

        Every grasp recipe validates on them, and GraspGAN's D learns what they look like.
        """
        return self.trains != RCAN


R = trainer_pb2
RECIPES: dict[int, Recipe] = {
    r.value: r
    for r in (
        Recipe(R.RECIPE_REAL_ONLY, "Real-Only", 0.0),
        Recipe(R.RECIPE_NAIVE_MIX, "Naive Mix", 0.5),
        Recipe(R.RECIPE_DBN_MIX, "DBN Mixing", 0.5, dbn=True),
        Recipe(R.RECIPE_DBN_MIX_RANDOMIZED, "Rand. (DBN Mixing & Randomization)", 0.5, dbn=True,
               sim_randomization=VISUAL),
        Recipe(R.RECIPE_DANN, "DANN (DBN Mixing & DANN)", 0.5, dbn=True, dann=True),
        Recipe(R.RECIPE_DANN_R, "DANN-R (DBN Mixing, DANN & Randomization)", 0.5, dbn=True,
               dann=True, sim_randomization=VISUAL),
        Recipe(R.RECIPE_SIM_ONLY, "Sim-Only", 1.0),
        Recipe(R.RECIPE_GRASPGAN_DANN_DBN, "GraspGAN (GraspGAN, DBN Mixing & DANN)", 0.5,
               dbn=True, dann=True, refiner=GRASPGAN),
        Recipe(R.RECIPE_GRASPGAN_SIM_ONLY, "GraspGAN sim-only (Table II)", 1.0,
               refiner=GRASPGAN),
        Recipe(R.RECIPE_RCAN, "RCAN (grasp model on canonical images)", 1.0,
               sim_randomization=VISUAL, refiner=RCAN, canonical=True),
        Recipe(R.RECIPE_GRASPGAN_GENERATOR, "GraspGAN generator G", 0.5, trains=GRASPGAN),
        Recipe(R.RECIPE_RCAN_GENERATOR, "RCAN generator", 1.0, sim_randomization=VISUAL,
               trains=RCAN),
    )
}  # fmt: skip


def refiner_available(registry: Registry, name: str) -> bool:
    """Whether generator `name` can be applied: a version labelled stable is published.

    Without a labels.json "stable" is the newest version, as the refiner serves it.
    """
    return registry.labels(name).get(STABLE) in registry.version_numbers(name)


def lookup(name_or_value: str | int) -> Recipe:
    """A recipe by enum value, enum name ("RECIPE_DANN") or short name ("DANN", "dann_r").

    Raises:
        KeyError: no recipe by that name or value.
    """
    if isinstance(name_or_value, int):
        return RECIPES[name_or_value]
    name = name_or_value.strip().upper().replace("-", "_")
    if not name.startswith("RECIPE_"):
        name = "RECIPE_" + name
    try:
        return RECIPES[trainer_pb2.Recipe.Value(name)]
    except ValueError:
        raise KeyError(name_or_value) from None


def schedule(text: str) -> list[tuple[int, Recipe]]:
    """A retraining schedule: "NAIVE_MIX", or "REAL_ONLY,2000:NAIVE_MIX".

    Each entry is the recipe for at least that many labeled real episodes; an entry
    without a count starts at 0.

    Returns:
        (least real episodes, recipe) pairs, by count, the first one at 0.

    Raises:
        ValueError: an empty schedule, a bad count, a repeated count, no entry at 0,
            an unknown recipe or one that trains a generator.
    """
    entries = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(
                f"{text!r}: an empty entry (use RECIPE or COUNT:RECIPE, comma-separated)"
            )
        count, sep, name = part.rpartition(":")
        try:
            least = int(count) if sep else 0
        except ValueError:
            raise ValueError(f"{part!r}: {count!r} is not a count of real episodes") from None
        try:
            recipe = lookup(name)
        except KeyError:
            raise ValueError(f"{part!r}: no recipe {name!r} (recipes: {short_names()})") from None
        if recipe.is_generator:
            raise ValueError(f"{part!r}: {recipe.name} does not train a grasp model")
        if least < 0:
            raise ValueError(f"{part!r}: the count must not be negative")
        entries.append((least, recipe))
    entries.sort(key=lambda entry: entry[0])
    counts = [least for least, _ in entries]
    if len(set(counts)) != len(counts):
        raise ValueError(f"{text!r}: a count appears twice")
    if counts[0] != 0:
        raise ValueError(f"{text!r}: say which recipe runs below {counts[0]} real episodes")
    return entries


def scheduled(entries: list[tuple[int, Recipe]], real_episodes: int) -> Recipe:
    """The schedule's recipe for this many labeled real episodes."""
    return [recipe for least, recipe in entries if least <= real_episodes][-1]


def automatic_spec(template: trainer_pb2.RunSpec, recipe: Recipe) -> trainer_pb2.RunSpec:
    """The template (auto_retrain_spec_file) for one scheduled recipe.

    A recipe without simulated samples leaves out the template's selection of
    simulated episodes and its scene loss, so one template serves a schedule such
    as "REAL_ONLY,2000:NAIVE_MIX".
    """
    spec = trainer_pb2.RunSpec()
    spec.CopyFrom(template)
    spec.recipe = recipe.value
    if not recipe.uses_sim:
        for name in ("object_set", "sim_randomization", "max_sim_episodes"):
            spec.data.ClearField(name)
        if "scene" in spec.params.weights:
            del spec.params.weights["scene"]
    return spec


def short_names() -> list[str]:
    """Every recipe's short name, in enum order."""
    return [RECIPES[v].name for v in sorted(RECIPES)]


def task_profile(profile: str) -> str:
    """The grasp-model profile that goes with a refiner profile (tiny and default: 64x64)."""
    return "paper" if profile == "paper" else "default"


def train_spec_fields(recipe: Recipe) -> dict:
    """The `training.TrainSpec` fields a (grasp) recipe fixes."""
    return {
        "recipe": recipe.name,
        "dbn": recipe.dbn,
        "dann": recipe.dann,
        "sim_fraction": recipe.sim_fraction,
    }
