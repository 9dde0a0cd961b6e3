"""Sim-farm test fixtures: a store, a small Kubernetes API server, and farms that use both."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from graspfleet.v1 import sim_farm_pb2_grpc
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.server import create_server as create_farm
from tests.fixtures.fake_kube import FakeKubernetes

NAMESPACE = "graspfleet"


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    server = FakeKubernetes()
    yield server
    server.close()


@pytest.fixture
def store(tmp_path: Path):
    server = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store"), grace_s=0))
    yield server
    server.stop(grace_s=0)


def farm_config(tmp_path: Path, store_address: str, **overrides) -> SimFarmConfig:
    """A farm on port 0 that runs collections as Jobs, polling fast."""
    settings = {
        "port": 0,
        "grace_s": 0.0,
        "store_address": store_address,
        "planner_address": "servo-planner:50053",
        "spool_dir": str(tmp_path / "spool"),
        "workers": 2,
        "collection_backend": "kubernetes",
        "k8s_image": "registry.example.com/graspfleet:0.1.0",
        "poll_interval_s": 0.1,
        **overrides,
    }
    return SimFarmConfig(**settings)


@pytest.fixture
def start_farm(tmp_path, kube, store) -> Iterator[Callable[..., sim_farm_pb2_grpc.SimFarmStub]]:
    """Starts farms on the fake API server and the store; stops them at the end."""
    servers, channels = [], []

    def start(**overrides) -> sim_farm_pb2_grpc.SimFarmStub:
        config = farm_config(tmp_path, store.address, **overrides)
        servers.append(create_farm(config, kubernetes_api=kube.api_client()))
        channels.append(grpc.insecure_channel(servers[-1].address))
        return sim_farm_pb2_grpc.SimFarmStub(channels[-1])

    yield start
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(grace_s=0)
