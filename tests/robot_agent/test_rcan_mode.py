"""An agent in RCAN mode against a real refiner, store, predictor and planner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from graspfleet.v1 import common_pb2, episode_store_pb2, robot_agent_pb2
from models.generators import export
from services.common.images import decode_image
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server as create_predictor
from services.refiner.config import RefinerConfig
from services.refiner.server import create_server as create_refiner
from services.robot_agent.config import AgentConfig
from services.robot_agent.server import create_server as create_agent
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from tests.fixtures import refiner_models
from tests.fixtures.waiting import until

SHIFT = 1.0  # the test RCAN generator brightens: canonical images differ from raw ones
State = robot_agent_pb2


class _Brightness(tf.Module):
    """A grasp model that answers the mean brightness of the xt it is shown, for every motion."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="x0"),
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="xt"),
            tf.TensorSpec([None, None, 5], tf.float32, name="motions"),
        ]
    )
    def serve(self, x0, xt, motions):
        brightness = tf.reduce_mean(tf.cast(xt, tf.float32), axis=[1, 2, 3]) / 255.0
        return {"success_probability": brightness[:, None] + 0.0 * motions[..., 0]}


def _publish_brightness_model(base: Path) -> None:
    folder = base / "grasp_success" / "1"
    module = _Brightness()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    (folder / "graspfleet_model.json").write_text(json.dumps({"image_size": [64, 64]}))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The brightness grasp model and the RCAN generator, exported once: the services only read
    them."""
    models = tmp_path_factory.mktemp("models")
    _publish_brightness_model(models)
    refiner_models.publish(models, export.KIND_RCAN, shift=SHIFT)
    return models


@pytest.fixture
def fleet(models, tmp_path):
    services = {"store": create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))}
    services["predictor"] = create_predictor(
        PredictorConfig(port=0, model_base_path=str(models), settle_s=0)
    )
    services["planner"] = create_planner(
        PlannerConfig(port=0, predictor_address=services["predictor"].address)
    )
    services["refiner"] = _refiner(models)
    yield services
    for server in services.values():
        server.stop(grace_s=0)


def _refiner(models: Path, port: int = 0):
    return create_refiner(
        RefinerConfig(port=port, model_base_path=str(models), modes=("rcan",), settle_s=0)
    )


def _agent(fleet, tmp_path, **overrides):
    config = dict(
        port=0,
        robot_id="kuka-01",
        planner_address=fleet["planner"].address,
        store_address=fleet["store"].address,
        refiner_address=fleet["refiner"].address,
        canonicalize=True,
        spool_dir=str(tmp_path / "spool"),
        max_steps=3,
        safe_stop_retry_s=0.2,
    )
    config.update(overrides)
    return create_agent(AgentConfig(**config))


def _stored(fleet) -> list:
    channel, stub = client.connect(fleet["store"].address)
    with channel:
        summaries = client.list_all(stub, episode_store_pb2.EpisodeFilter(robot_ids=["kuka-01"]))
        return [
            stub.GetEpisode(
                episode_store_pb2.GetEpisodeRequest(episode_id=s.episode_id, include_steps=True)
            )
            for s in summaries
        ]


def test_the_planner_sees_canonical_images_and_the_store_gets_both(fleet, tmp_path):
    server, agent = _agent(fleet, tmp_path, episodes=2)
    try:
        assert agent.wait(120)
        assert until(lambda: agent.spool.depth() == 0)
    finally:
        server.stop()
    episodes = _stored(fleet)
    assert len(episodes) == 2 and agent.status().episodes_attempted == 2
    for episode in episodes:
        assert episode.header.domain == common_pb2.DOMAIN_REAL
        x0, x0_canonical = (
            decode_image(episode.header.x0),
            decode_image(episode.header.x0_canonical),
        )
        assert np.abs(x0_canonical.astype(int) - refiner_models.expected(x0, SHIFT)).max() <= 1
        planned = [s for s in episode.steps if s.HasField("predicted_success")]
        assert planned, "no step was planned by the model"
        for step in episode.steps:
            raw, canonical = decode_image(step.image), decode_image(step.canonical)
            assert raw.shape == canonical.shape == (64, 64, 3)
            assert not np.array_equal(raw, canonical)  # the raw camera image is kept
            assert np.abs(canonical.astype(int) - refiner_models.expected(raw, SHIFT)).max() <= 1
        for step in planned:
            # The model answers the brightness of the image it was shown: the canonical one.
            shown = decode_image(step.canonical).mean() / 255.0
            raw = decode_image(step.image).mean() / 255.0
            assert step.predicted_success == pytest.approx(shown, abs=2e-3)
            assert abs(step.predicted_success - raw) > 0.01


def test_a_refiner_outage_stops_the_arm_safely_then_the_agent_resumes(fleet, tmp_path):
    server, agent = _agent(fleet, tmp_path)
    try:
        assert until(lambda: agent.status().episodes_attempted >= 1)
        port = fleet["refiner"].port
        fleet["refiner"].stop(grace_s=0)
        assert until(lambda: agent.status().state == State.AGENT_STATE_SAFE_STOP, 30)
        assert "refiner" in agent.status().last_error
        before = agent.status().episodes_attempted
        fleet["refiner"] = _refiner(Path(fleet["predictor"].config.model_base_path), port)
        assert until(lambda: agent.status().episodes_attempted >= before + 1, 60)
    finally:
        server.stop()
    assert until(lambda: len(_stored(fleet)) == agent.status().episodes_attempted, 30)
    assert all(e.header.x0_canonical.data for e in _stored(fleet))
