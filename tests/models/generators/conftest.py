"""Refiner test data: an episode store holding SIM and REAL sample episodes with masks."""

from __future__ import annotations

import pytest

from graspfleet.v1 import common_pb2
from models.episodes.synthetic import sample_episode
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server

EPISODES = 16
STEPS_PER_EPISODE = 3
RCAN_EPISODES = 4


@pytest.fixture(scope="session")
def refiner_store(tmp_path_factory):
    """(data_root, summaries): SIM and REAL 64x64 episodes, successes and failures, with masks."""
    data_root = tmp_path_factory.mktemp("refiner-store")
    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(data_root), grace_s=1.0))
    channel, stub = client.connect(server.address)
    with channel:
        for seed in range(EPISODES):
            real = seed % 2 == 1
            record = sample_episode(
                seed,
                domain=common_pb2.DOMAIN_REAL if real else common_pb2.DOMAIN_SIM,
                num_steps=STEPS_PER_EPISODE,
                robot_id="kuka-01" if real else "sim-01",
            )
            record.outcome.result = (
                common_pb2.GRASP_RESULT_SUCCESS
                if (seed // 2) % 2 == 0
                else common_pb2.GRASP_RESULT_FAILURE
            )
            client.write_episode(stub, record)
        summaries = list(client.list_all(stub))
    server.stop(grace_s=0)
    return data_root, summaries


@pytest.fixture(scope="session")
def rcan_store(tmp_path_factory):
    """(data_root, summaries): visually randomized PyBullet episodes with canonical renders.

    The last episode is collected without canonical images.
    """
    from models.episodes.records import to_record
    from robots.config import WorldConfig
    from robots.episode import run_episode
    from robots.policies import RandomPolicy
    from robots.world import GraspWorld

    data_root = tmp_path_factory.mktemp("rcan-store")
    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(data_root), grace_s=1.0))
    channel, stub = client.connect(server.address)
    world_config = WorldConfig(seed=4, randomization="visual")
    with channel, GraspWorld(world_config, render_canonical=True) as world:
        policy = RandomPolicy(world)
        for seed in range(RCAN_EPISODES + 1):
            world.render_canonical = seed < RCAN_EPISODES
            run = run_episode(world, policy, seed=seed, max_steps=STEPS_PER_EPISODE)
            record = to_record(
                run,
                episode_id=f"rcan-{seed}",
                robot_id="sim-01",
                domain="sim",
                randomization="visual",
                policy="random",
                object_set="train",
            )
            client.write_episode(stub, record)
        summaries = list(client.list_all(stub))
    server.stop(grace_s=0)
    return data_root, summaries
