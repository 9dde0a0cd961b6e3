"""How much of everything `make run` does: the default and quick plans."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Plan:
    """How much of everything a run does.

    Attributes:
        bootstrap_episodes: Simulated random grasps on the train objects (version 1's data).
        first_tries: Random grasps per arm before version 1 exists.
        train_steps: Version 1's training steps.
        retrain_every: New labeled real episodes that make the trainer retrain.
        retrain_first: Labeled real episodes the store must hold before the first
            retraining (auto_retrain_min_episodes); 0 for no minimum.
        retrain_steps: Training steps of an automatic run.
        recipes: The trainer's retraining schedule (auto_retrain_recipe).
        retrain_start_from: The version automatic runs fine-tune (RunSpec.start_from);
            0 trains them from random weights. Version 1 is the sim-pretrained one.
        min_grasps: Real grasps the canary, and stable over the same period, need
            before the rollout decides.
        max_grasps: Canary grasps after which a canary not shown not worse is rolled back.
        max_wait_s: Seconds after which the same holds.
        epsilon: Share of random commands among the arms' CEM commands.
        minutes: The whole run's budget (the flywheel turns until it is spent).
        status_every_s: How often the status table is printed.
        test_scenes: Scenes of the closing evaluation on the real-test arm (the stable
            version, random and the oracle on each); 0 skips it.
    """

    bootstrap_episodes: int
    first_tries: int
    train_steps: int
    retrain_every: int
    retrain_first: int
    retrain_steps: int
    recipes: str
    retrain_start_from: int
    min_grasps: int
    max_grasps: int
    max_wait_s: float
    epsilon: float
    minutes: float
    status_every_s: float
    test_scenes: int


PLANS = {
    "quick": Plan(
        bootstrap_episodes=60,
        first_tries=4,
        train_steps=150,
        retrain_every=12,
        retrain_first=0,
        retrain_steps=60,
        # Real labels fine-tune the sim-pretrained version 1 (make pretraining's decision,
        # docs/results.md "Sim pretraining against more real steps").
        recipes="REAL_ONLY",
        retrain_start_from=1,
        min_grasps=6,
        max_grasps=60,
        max_wait_s=120,
        epsilon=0.1,
        minutes=4,
        status_every_s=15,
        test_scenes=4,
    ),
    "default": Plan(
        bootstrap_episodes=1200,
        first_tries=30,
        train_steps=1500,
        # With 273 and 423 real episodes the first Naïve Mix run was no better than
        # version 1, with 527 and 646 it was (docs/results.md, the flywheel): the first
        # retraining waits for 650 labeled real episodes (a fifth are held out).
        retrain_every=500,
        retrain_first=650,
        retrain_steps=1500,
        # Real labels fine-tune the sim-pretrained version 1 (make pretraining's decision,
        # docs/results.md "Sim pretraining against more real steps").
        recipes="REAL_ONLY",
        retrain_start_from=1,
        min_grasps=60,
        max_grasps=600,
        max_wait_s=600,
        epsilon=0.1,
        minutes=20,
        status_every_s=30,
        test_scenes=60,
    ),
}

ARMS = {"quick": ["kuka-01", "kuka-02"], "default": ["kuka-01", "kuka-02", "kuka-03", "kuka-04"]}
REPORT_RESERVE_S = 45  # the report's share of --minutes
TEST_ARM_RESERVE_S = 90  # the closing evaluation's share, when it runs


def plan_of(args: argparse.Namespace) -> Plan:
    """The plan of `graspfleet run`'s arguments: quick or default, with its overrides."""
    base = PLANS["quick" if args.quick else "default"]
    overrides = {
        "bootstrap_episodes": args.bootstrap_episodes,
        "train_steps": args.train_steps,
        "retrain_every": args.retrain_every,
        "retrain_first": args.retrain_first,
        "retrain_steps": args.retrain_steps,
        "min_grasps": args.min_grasps,
        "minutes": args.minutes,
        "test_scenes": args.test_scenes,
    }
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
