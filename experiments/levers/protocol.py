"""Lever 1 of "grasping that works": exploration data that covers what CEM visits.

Fixed before anything runs. Decided on validation only: no model here is ever
scored on the real-test objects.

Question: at the same number of simulated episodes, does replacing half of the
random-exploration episodes with noisy-oracle episodes (the oracle's grasp moved
by N(0, 2 cm) and turned by N(0, 0.3 rad): near hits and near misses around
grasps that work; privileged state, so simulation only) raise closed-loop grasp
success on objects the models never saw?

Rows (every one trained with the same steps, batch, recipe and seeds):
- "random-data": the first `episodes` random-exploration episodes.
- "mixed-data": the first `episodes / 2` of the same random episodes and the first
  `episodes / 2` noisy-oracle episodes.
Both validate (keep the best step by AUC) on random episodes on the sim-test objects.

Scored: robots/evaluation/sim-validation.yaml (plain simulation, sim-test
objects), `scenes` paired scenes, CEM through the servo-planner with its
default settings; random exploration and the oracle on the same scenes.
Planned comparison: mixed-data − random-data, hierarchical bootstrap over seeds and scenes
(`models.scoring.seeded_difference`); each row − random exploration, the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

VALIDATION_ARM = Path(__file__).parents[2] / "robots" / "evaluation" / "sim-validation.yaml"
ROWS = ("random-data", "mixed-data")


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

    def __post_init__(self) -> None:
        if self.episodes < 2 or self.episodes % 2:
            raise ValueError(f"episodes={self.episodes} must be even and at least 2")
        if not self.seeds:
            raise ValueError("at least one seed")

    def as_dict(self) -> dict:
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
