"""Levers 1 and 4 of "grasping that works": exploration data, and object diversity.

Fixed before anything is scored. Decided on validation only: no model here is
ever scored on the real-test objects.

Lever 1, exploration that covers what CEM visits: at the same number of
simulated episodes, does replacing half of the random-exploration episodes with
noisy-oracle episodes (the oracle's grasp moved by N(0, 2 cm) and turned by
N(0, 0.3 rad): near hits and near misses around grasps that work; privileged
state, so simulation only) raise closed-loop success on unseen objects?

Lever 4, object diversity: the training pool's objects are thin prism unions of
8-15 cm, the real-test family compact shapes of 7-10 cm, three to a bin. At the
same number of episodes, does replacing half of the training-pool episodes with
episodes on new procedural objects in the test family's size range (three to a
bin; prism unions, never the real-test meshes) raise success on unseen compact
objects?

Rows (every one trained with the same steps, batch, recipe and seeds):
- "random-data": the first `episodes` random-exploration episodes (training pool).
- "mixed-data": the first `episodes / 2` of those and the first `episodes / 2`
  noisy-oracle episodes (training pool).
- "compact-data": the first `episodes / 2` of the random episodes and the first
  `episodes / 2` random episodes on procedural compact objects.
Every row validates (keeps the best step by AUC) on random episodes on the sim-test objects.

Scored, `scenes` paired scenes each, CEM through the servo-planner with its
default settings, random exploration and the oracle on the same scenes:
- robots/evaluation/sim-validation.yaml (plain simulation, sim-test objects);
- robots/evaluation/compact-validation.yaml (plain simulation, new procedural
  objects in the real-test size range, three to a bin).
Planned comparisons, hierarchical bootstrap over seeds and scenes
(`models.scoring.seeded_difference`): mixed-data − random-data on the
sim-validation arm (lever 1); compact-data − random-data on the
compact-validation arm (lever 4); every row − random exploration on each arm.

Lever 3, the servoing decision (added before any model was scored): the row with
the highest pooled success on the compact-validation arm (random-data on a tie)
is scored again on that arm with each close threshold of
`servoing_close_ratios` (the raise threshold at its default, 0.5, or the close
threshold where that is lower), every seed, on the same scenes. Planned: each
threshold − the planner's default 0.9, over seeds and scenes. The threshold a
later recipe takes is the best of these on this arm; it is never chosen on the
real-test objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

ARMS = Path(__file__).parents[2] / "robots" / "evaluation"
# Evaluation id -> the validation arm it scores on.
VALIDATION_ARMS = {
    "levers-validation": ARMS / "sim-validation.yaml",
    "levers-compact": ARMS / "compact-validation.yaml",
}
# The arm the compact training episodes are collected on: the compact validation arm's
# settings; the collection's own seed draws other scenes and so other procedural objects.
COMPACT_TRAINING_ARM = VALIDATION_ARMS["levers-compact"]
ROWS = ("random-data", "mixed-data", "compact-data")


@dataclass(frozen=True)
class Settings:
    """The experiment's numbers.

    Attributes:
        episodes: Simulated training episodes of every row.
        validation_episodes: Random episodes on the sim-test objects (offline validation).
        grasp_steps: Optimizer steps of every grasp model (batch 32).
        eval_every: Validation interval; the kept weights are the best validation AUC's.
        scene_weight: The auxiliary scene loss (every row trains on simulation).
        seeds: Training seeds of every row.
        scenes: Paired closed-loop scenes per model.
        scene_seed: Seeds the closed-loop scenes.
        shards: Worker processes of collections and evaluations.
        max_steps: Steps per episode, in collection and evaluation.
        data_seed: Seeds the collections.
        servoing_close_ratios: Close thresholds lever 3 scores besides the default 0.9.
    """

    episodes: int = 6000
    validation_episodes: int = 400
    grasp_steps: int = 6000
    eval_every: int = 500
    scene_weight: float = 1.0
    seeds: tuple[int, ...] = (0, 1, 2)
    scenes: int = 150
    scene_seed: int = 11
    shards: int = 2
    max_steps: int = 8
    data_seed: int = 41
    servoing_close_ratios: tuple[float, ...] = (0.5, 0.7, 0.97)

    def __post_init__(self) -> None:
        if self.episodes < 2 or self.episodes % 2:
            raise ValueError(f"episodes={self.episodes} must be even and at least 2")
        if not self.seeds:
            raise ValueError("at least one seed")

    def as_dict(self) -> dict:
        """The settings as a plain dict, for the report."""
        return asdict(self)


QUICK = Settings(
    episodes=16,
    validation_episodes=8,
    grasp_steps=6,
    eval_every=3,
    seeds=(0,),
    scenes=3,
    max_steps=5,
)
