"""The automatic runs `make run` configures are ones the trainer accepts, for every plan and
every recipe a retraining schedule may name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from services.fleet.plan import PLANS
from services.fleet.training import automatic_run_spec
from services.trainer import recipes
from services.trainer.spec import normalize
from tests.trainer.conftest import trainer_config


class _NoStore:
    """A trainer config names a store; `normalize` never calls it."""

    address = "localhost:1"

    class config:  # noqa: N801 - stands in for ServiceServer.config
        data_dir = "/nonexistent"


@pytest.mark.parametrize("name", sorted(PLANS))
@pytest.mark.parametrize("schedule", ["NAIVE_MIX", "REAL_ONLY", "REAL_ONLY,600:NAIVE_MIX,900:DANN"])
def test_the_trainer_accepts_the_automatic_spec_for_every_scheduled_recipe(name, schedule):
    # start_from names a published version; tests/trainer/test_start_from.py covers that part.
    plan = replace(PLANS[name], recipes=schedule, retrain_start_from=0)
    template = automatic_run_spec(plan)
    config = trainer_config(Path("/nonexistent"), _NoStore())
    for _, recipe in recipes.schedule(plan.recipes):
        spec = recipes.automatic_spec(template, recipe)
        normalized, _ = normalize(spec, config)
        assert normalized.params.steps == plan.retrain_steps
        # Simulated episodes and their scene loss only for the recipes that train on them.
        assert ("scene" in normalized.params.weights) == recipe.uses_sim
        assert (normalized.data.object_set == "train") == recipe.uses_sim


def test_a_plan_that_fine_tunes_names_its_version():
    assert not automatic_run_spec(replace(PLANS["quick"], retrain_start_from=0)).HasField(
        "start_from"
    )
    spec = automatic_run_spec(replace(PLANS["default"], retrain_start_from=1))
    assert spec.start_from.version == 1 and not spec.start_from.label


def test_make_runs_plans_fine_tune_the_sim_pretrained_version_one():
    for plan in PLANS.values():
        assert plan.recipes == "REAL_ONLY" and plan.retrain_start_from == 1
        assert automatic_run_spec(plan).start_from.version == 1
