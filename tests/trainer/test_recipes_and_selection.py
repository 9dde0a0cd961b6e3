"""The gate's rule, the recipe table, and which episodes a run's data selection takes."""

from __future__ import annotations

import pytest

from graspfleet.v1 import common_pb2
from graspfleet.v1 import trainer_pb2 as S
from models.grasp_success.training import TrainSpec
from services.trainer import recipes
from services.trainer.job import gate
from services.trainer.selection import select
from services.trainer.spec import normalize
from tests.trainer.conftest import tiny_spec, trainer_config


def test_the_gate_rule():
    first = gate.decide(0.6, None, None, 40, enabled=True, max_regression=0.0)
    assert first.passed and "no stable version" in first.message
    within = gate.decide(0.70, 0.71, 2, 40, enabled=True, max_regression=0.02)
    assert within.passed and within.metrics["stable_version"] == 2
    beyond = gate.decide(0.60, 0.71, 2, 40, enabled=True, max_regression=0.02)
    assert not beyond.passed and "0.6000" in beyond.message and "0.7100" in beyond.message
    must_improve = gate.decide(0.75, 0.71, 2, 40, enabled=True, max_regression=-0.05)
    assert not must_improve.passed
    assert gate.decide(0.80, 0.71, 2, 40, enabled=True, max_regression=-0.05).passed
    assert gate.decide(0.10, 0.90, 2, 40, enabled=False, max_regression=0.0).passed


def test_every_recipe_is_in_the_table_and_maps_to_a_valid_train_spec():
    # An evaluation is a run that trains nothing: it has no training regime (tests/trainer/
    # test_evaluations.py), and auto_retrain_recipe or `train submit --recipe` cannot name it.
    trains = set(S.Recipe.values()) - {S.RECIPE_UNSPECIFIED, S.RECIPE_EVALUATION}
    assert set(recipes.RECIPES) == trains
    with pytest.raises(KeyError):
        recipes.lookup("evaluation")
    for recipe in recipes.RECIPES.values():
        if not recipe.refiner:
            TrainSpec(**recipes.train_spec_fields(recipe))  # raises if the regime is inconsistent
    assert recipes.lookup("dann-r") is recipes.lookup("RECIPE_DANN_R")
    assert recipes.lookup(S.RECIPE_DANN_R).sim_randomization == common_pb2.RANDOMIZATION_VISUAL
    assert recipes.lookup("naive_mix").dbn is False and recipes.lookup("dbn_mix").dbn is True
    with pytest.raises(KeyError):
        recipes.lookup("magic")


def test_selection_limits_real_training_data_but_not_the_validation_set(
    tmp_path, store, store_client
):
    config = trainer_config(tmp_path, store)

    def chosen(recipe, **data):
        spec = tiny_spec(recipe)
        spec.data.MergeFrom(S.DataSelection(**data))
        return select(store_client, *normalize(spec, config))

    everything = chosen(S.RECIPE_DANN)
    three = chosen(S.RECIPE_DANN, max_real_episodes=3)
    half = chosen(S.RECIPE_DANN, real_fraction=0.5)
    assert [e.episode_id for e in three.validation] == [e.episode_id for e in everything.validation]
    assert three.description["real"]["train"] == 3 and half.description["real"]["train"] == 8
    assert all(e.domain == common_pb2.DOMAIN_REAL for e in everything.validation)
    sim = [
        e for e in chosen(S.RECIPE_DBN_MIX_RANDOMIZED).train if e.domain == common_pb2.DOMAIN_SIM
    ]
    assert len(sim) == 8 and {e.randomization for e in sim} == {common_pb2.RANDOMIZATION_VISUAL}
    sim_only = chosen(S.RECIPE_SIM_ONLY)
    assert {e.domain for e in sim_only.train} == {common_pb2.DOMAIN_SIM} and sim_only.validation
    robots = chosen(S.RECIPE_REAL_ONLY, robot_ids=["kuka-01"])
    assert {e.robot_id for e in robots.train + robots.validation} == {"kuka-01"}
