"""The paper's training regimes as one table: what each recipe trains on and how.

A recipe fixes the regime (DBN, DANN, the SIM share of every batch) and the
default randomization of the simulated episodes it draws. Everything else (how
much real data, which robots, steps, batch size) comes from the RunSpec. The
refiner recipes are listed so they are refused with a reason rather than as
unknown: they need the GraspGAN / RCAN generator, which is not built yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from graspfleet.v1 import common_pb2, trainer_pb2

NONE = common_pb2.RANDOMIZATION_NONE
VISUAL = common_pb2.RANDOMIZATION_VISUAL


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
        refiner: The generator it needs ("graspgan", "rcan"); empty when none.
    """

    value: int
    paper_name: str
    sim_fraction: float
    dbn: bool = False
    dann: bool = False
    sim_randomization: int = NONE
    refiner: str = ""

    @property
    def name(self) -> str:
        """The enum name without its prefix: "DANN_R"."""
        return trainer_pb2.Recipe.Name(self.value).removeprefix("RECIPE_")

    @property
    def uses_sim(self) -> bool:
        return self.sim_fraction > 0

    @property
    def uses_real_labels(self) -> bool:
        """Trains on labeled real episodes (every recipe validates on them)."""
        return self.sim_fraction < 1


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
               dbn=True, dann=True, refiner="graspgan"),
        Recipe(R.RECIPE_GRASPGAN_SIM_ONLY, "GraspGAN sim-only (Table II)", 1.0,
               refiner="graspgan"),
        Recipe(R.RECIPE_RCAN, "RCAN (grasp model on canonical images)", 1.0, refiner="rcan"),
        Recipe(R.RECIPE_GRASPGAN_GENERATOR, "GraspGAN generator G", 0.5, refiner="graspgan"),
        Recipe(R.RECIPE_RCAN_GENERATOR, "RCAN generator", 1.0, refiner="rcan"),
    )
}  # fmt: skip


def refiner_available(refiner: str) -> bool:
    """Whether the generator a recipe needs can be used.

    The hook for the refiner service: once GraspGAN / RCAN exist, this says so
    and the job refines the simulated episodes before training.
    """
    return False


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


def short_names() -> list[str]:
    """Every recipe's short name, in enum order."""
    return [RECIPES[v].name for v in sorted(RECIPES)]


def train_spec_fields(recipe: Recipe) -> dict:
    """The `training.TrainSpec` fields a recipe fixes."""
    return {
        "recipe": recipe.name,
        "dbn": recipe.dbn,
        "dann": recipe.dann,
        "sim_fraction": recipe.sim_fraction,
    }
