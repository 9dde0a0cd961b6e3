"""Config dataclasses: flags over environment over defaults, and clear refusals."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.common.config import (
    ConfigError,
    ServerConfig,
    check_address,
    config_from,
    load_config,
    setting,
)
from services.episode_store.config import EpisodeStoreConfig


@dataclass(frozen=True)
class PlannerLike(ServerConfig):
    """A service that cannot start without the address of another."""

    predictor_address: str = setting("", "grasp-predictor host:port", required=True)
    population: int = setting(64, "CEM population")
    verbose: bool = setting(False, "say more")
    labels: tuple = setting(("stable",), "model labels")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_address("predictor_address", self.predictor_address)


def test_flags_win_over_environment_over_defaults():
    env = {"GRASPFLEET_PREDICTOR_ADDRESS": "env:1", "GRASPFLEET_POPULATION": "32"}
    config = config_from(PlannerLike, {"predictor_address": "flag:2"}, env)
    assert config.predictor_address == "flag:2"
    assert config.population == 32
    assert config.port == 0 and config.verbose is False
    config = config_from(
        PlannerLike,
        {"verbose": "true", "labels": "stable, canary"},
        {"GRASPFLEET_PREDICTOR_ADDRESS": "h:1"},
    )
    assert config.verbose is True and config.labels == ("stable", "canary")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {},
            "predictor_address is required: set --predictor-address or GRASPFLEET_PREDICTOR_ADDRESS",
        ),
        ({"predictor_address": "nocolon"}, "predictor_address='nocolon' is not host:port"),
        (
            {"predictor_address": "h:1", "population": "many"},
            "population='many' is not a valid int",
        ),
        ({"predictor_address": "h:1", "port": "70000"}, "port=70000 is not a TCP port"),
        ({"predictor_address": "h:1", "verbose": "maybe"}, "verbose='maybe' is not a boolean"),
        ({"predictor_address": "h:1", "log_level": "LOUD"}, "log_level='LOUD'"),
    ],
)
def test_bad_settings_name_what_to_fix(flags, message):
    with pytest.raises(ConfigError) as refused:
        config_from(PlannerLike, flags, {})
    assert message in str(refused.value)


def test_load_config_exits_with_a_message(capsys, monkeypatch):
    monkeypatch.delenv("GRASPFLEET_PREDICTOR_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as stopped:
        load_config(PlannerLike, "graspfleet planner serve", [])
    assert stopped.value.code == 2
    assert "configuration error: predictor_address is required" in capsys.readouterr().err


def test_store_config_from_flags_and_environment(monkeypatch):
    monkeypatch.setenv("GRASPFLEET_POSTGRES_DSN", "host=/tmp dbname=x")
    config = load_config(EpisodeStoreConfig, "store", ["--data-dir", "/data", "--max-steps", "50"])
    assert (config.data_dir, config.max_steps, config.postgres_dsn) == (
        "/data",
        50,
        "host=/tmp dbname=x",
    )
    assert config.port == 50051
    with pytest.raises(ConfigError, match="max_steps=0 must be at least 1"):
        EpisodeStoreConfig(max_steps=0)


def test_configs_are_frozen():
    config = EpisodeStoreConfig()
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_a_required_setting_set_empty_is_refused_however_the_config_is_built():
    from services.grasp_predictor.config import PredictorConfig
    from services.refiner.config import RefinerConfig

    for config in (PredictorConfig, RefinerConfig):
        with pytest.raises(ConfigError, match="model_base_path is required: set --model-base-path"):
            config(model_base_path="")
    with pytest.raises(ConfigError, match="model_base_path is required"):
        config_from(PredictorConfig, {}, {"GRASPFLEET_MODEL_BASE_PATH": ""})
