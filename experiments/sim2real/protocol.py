"""What the sim-to-real table measures, fixed in advance (docs/decisions/sim2real-protocol-2.md).

Data: random-exploration episodes. Simulated ones on the "train" objects, plain
(the paper's no randomization) and visually randomized (with canonical renders
for RCAN); proxy-real ones on the "real-train" objects from kuka-01's arm
configuration. Every model is scored on robots/evaluation/proxy-real-test.yaml:
the proxy-real arm grasping the "real-test" family, which no model trains on.

Weights are never chosen on the test objects: rows with real labels keep the
best validation on held-out real-train bins; rows without real labels on the
held-out sim-test objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from robots.config import PROXY_REAL_FACTORS

# What the settings cannot say: bumped when a change of code alters the episodes or the
# evaluation under the same settings, so scores of the old code are never carried into a
# table of the new (2: the proxy-real sensor's noise has a stream of its own).
PROTOCOL_VERSION = 2

# Simulated data of a row: plain, visually randomized, GraspGAN-refined plain, or
# RCAN-canonicalized randomized.
SIM_DATA = ("none", "plain", "randomized", "graspgan", "rcan")
BUDGETS = ("none", "low", "all")


@dataclass(frozen=True)
class Row:
    """One row of the table: a grasp model's recipe.

    Attributes:
        name: Row id (also the evaluation contender's name).
        table: "II" (no real labels) or "III" (real labels).
        label: The paper's name for it.
        sim: Which simulated data it trains on (SIM_DATA).
        budget: Real labeled episodes: "none", "low" or "all".
        dbn: Domain-specific batch norm.
        dann: Domain-adversarial head.
        finetune: Start from another row's weights (RCAN fine-tuned).
    """

    name: str
    table: str
    label: str
    sim: str
    budget: str
    dbn: bool = False
    dann: bool = False
    finetune: str = ""

    @property
    def uses_real_labels(self) -> bool:
        """Whether the row trains on labeled real episodes (a budget other than "none")."""
        return self.budget != "none"


def table_rows() -> list[Row]:
    """Every row of Tables II and III, in the order they are trained and reported."""
    rows = [
        Row("sim-only", "II", "Sim-Only", "plain", "none"),
        Row("rand", "II", "Rand.", "randomized", "none"),
        Row("graspgan", "II", "GraspGAN", "graspgan", "none"),
        Row("rcan", "II", "RCAN zero-shot", "rcan", "none"),
    ]
    for budget in ("low", "all"):
        rows += [
            Row(f"real-only-{budget}", "III", "Real-Only", "none", budget),
            Row(f"naive-{budget}", "III", "Naïve Mix", "plain", budget),
            Row(f"rand-dbn-{budget}", "III", "Rand.", "randomized", budget, dbn=True),
            Row(f"dann-{budget}", "III", "DANN", "plain", budget, dbn=True, dann=True),
            Row(f"dann-r-{budget}", "III", "DANN-R", "randomized", budget, dbn=True, dann=True),
            Row(f"graspgan-{budget}", "III", "GraspGAN", "graspgan", budget, dbn=True, dann=True),
            Row(f"rcan-ft-{budget}", "III", "RCAN fine-tuned", "rcan", budget, finetune="rcan"),
        ]
    return rows


@dataclass(frozen=True)
class Settings:
    """The whole protocol's numbers.

    Attributes:
        sim_episodes: Plain simulated episodes (and as many randomized ones).
        real_episodes: Proxy-real episodes collected; `real_validation_fraction` of
            them (whole object bins) validate, the rest are the "all" budget.
        low_real_episodes: The low budget, drawn from the "all" training episodes.
        sim_validation_episodes: Simulated episodes on the sim-test objects.
        real_validation_fraction: Share of real episodes held out, by object bin.
        grasp_steps: Optimizer steps of every grasp model (batch 32).
        eval_every: Validation interval (the kept weights are the best validation's).
        scene_weight: The auxiliary scene loss of every row with simulated data.
        generator_steps: GraspGAN and RCAN generator steps.
        seeds: Training seeds of every grasp model but Sim-Only's and Real-Only's.
        reference_seeds: Training seeds of Sim-Only and Real-Only (all real data): their
            spread is what every other row is compared against.
        graspgan_seeds: Seeds of every GraspGAN row (Tables II and III): of its generator
            and of the grasp model trained on that generator's refined images.
        scenes: Paired evaluation scenes per model.
        scene_seed: Seeds the evaluation scenes.
        shards: Worker processes of collections and evaluations.
        max_steps: Steps per episode.
        factors: The proxy-real factors the gap decomposition switches on one at a time.
        data_seed: Seeds the collections.
    """

    sim_episodes: int = 12000
    real_episodes: int = 15000
    low_real_episodes: int = 240
    sim_validation_episodes: int = 400
    real_validation_fraction: float = 0.2
    grasp_steps: int = 6000
    eval_every: int = 500
    scene_weight: float = 1.0
    generator_steps: int = 2500
    seeds: tuple[int, ...] = (0,)
    reference_seeds: tuple[int, ...] = (0, 1)
    graspgan_seeds: tuple[int, ...] = (0, 1, 2)
    scenes: int = 150
    scene_seed: int = 7
    shards: int = 2
    max_steps: int = 8
    factors: tuple[str, ...] = PROXY_REAL_FACTORS
    data_seed: int = 31
    rows: tuple[str, ...] = field(default_factory=lambda: tuple(r.name for r in table_rows()))

    def as_dict(self) -> dict:
        """The settings as a plain dict, for the report."""
        return asdict(self)


QUICK = Settings(
    sim_episodes=24,
    real_episodes=40,
    low_real_episodes=8,
    sim_validation_episodes=8,
    real_validation_fraction=0.2,
    grasp_steps=6,
    eval_every=3,
    generator_steps=3,
    seeds=(0,),
    reference_seeds=(0,),
    graspgan_seeds=(0,),
    scenes=4,
    shards=2,
    max_steps=5,  # the gripper needs four 10 cm moves to reach the tray from its start
    factors=("sensor",),
    # One row of every kind of stage: plain and generated sim data, real budgets, fine-tuning.
    rows=("sim-only", "real-only-all", "dann-low", "graspgan", "rcan", "rcan-ft-low"),
)
