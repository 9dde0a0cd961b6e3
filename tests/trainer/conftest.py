"""Trainer test fixtures: an in-process episode store with SIM and REAL episodes, and trainers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from graspfleet.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from models.episodes.synthetic import sample_episode
from services.common.server import ServiceServer
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.trainer.backends import LocalBackend
from services.trainer.client import TERMINAL
from services.trainer.config import TrainerConfig
from services.trainer.server import create_server

TOKEN = "s3cret-test-token"
AUTH = [("authorization", f"Bearer {TOKEN}"), ("x-graspfleet-user", "tester")]
STEPS_PER_EPISODE = 4
REAL = common_pb2.DOMAIN_REAL
SIM = common_pb2.DOMAIN_SIM


def episode(
    seed: int,
    domain: int,
    success: bool,
    *,
    robot_id: str = "",
    randomization: int = 0,
    model: common_pb2.ModelRef | None = None,
    now: bool = False,
):
    """A 64x64 sample episode with the given label (the geometry's own outcome is overridden).

    With `now` it starts now (the rollout compares grasps since a canary began), else at a
    fixed time in the past.

    Simulated episodes carry masks; real ones, as an arm records them, do not.
    """
    record = sample_episode(
        seed,
        robot_id=robot_id or ("sim-01" if domain == SIM else f"kuka-0{seed % 2 + 1}"),
        domain=domain,
        num_steps=STEPS_PER_EPISODE,
        image_size=64,
        with_masks=domain == SIM,
    )
    if randomization:
        record.header.randomization = randomization
    if model is not None:
        record.header.model.CopyFrom(model)
    if now:
        record.header.started_at.GetCurrentTime()
    record.outcome.result = (
        common_pb2.GRASP_RESULT_SUCCESS if success else common_pb2.GRASP_RESULT_FAILURE
    )
    return record


def fill(stub, records) -> None:
    for record in records:
        client.write_episode(stub, record)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[ServiceServer]:
    """An in-process store: 12 plain and 8 visually randomized SIM episodes, 20 REAL episodes
    on two arms, successes and failures in every group, plus one unlabeled REAL episode."""
    data_dir = tmp_path_factory.mktemp("store")
    server = create_store(EpisodeStoreConfig(port=0, data_dir=str(data_dir), grace_s=0))
    channel, stub = client.connect(server.address)
    with channel:
        fill(stub, [episode(s, SIM, s % 2 == 0) for s in range(12)])
        visual = common_pb2.RANDOMIZATION_VISUAL
        fill(stub, [episode(s, SIM, s % 2 == 0, randomization=visual) for s in range(12, 20)])
        fill(stub, [episode(s, REAL, (s // 2) % 2 == 0) for s in range(100, 120)])
        aborted = episode(120, REAL, True)
        aborted.outcome.result = common_pb2.GRASP_RESULT_ABORTED
        client.write_episode(stub, aborted)
    yield server
    server.stop(grace_s=0)


def with_canonical(record):
    """`record` with canonical renders: the world's flat class colours painted over its masks
    (robots.canonical.PALETTE), as a sim-farm collection with render_canonical stores them."""
    from robots.canonical import PALETTE
    from services.common.images import decode_image, encode_image

    record.header.x0_canonical.CopyFrom(encode_image(PALETTE[decode_image(record.header.x0_mask)]))
    for step in record.steps:
        step.canonical.CopyFrom(encode_image(PALETTE[decode_image(step.mask)]))
    return record


@pytest.fixture(scope="module")
def refiner_store(tmp_path_factory) -> Iterator[ServiceServer]:
    """An in-process store for the refiner recipes: 8 plain SIM episodes with masks, 8 visually
    randomized SIM episodes with masks and canonical renders plus one without them, and 12
    REAL episodes on two arms; successes and failures in every group."""
    data_dir = tmp_path_factory.mktemp("refiner-store")
    server = create_store(EpisodeStoreConfig(port=0, data_dir=str(data_dir), grace_s=0))
    channel, stub = client.connect(server.address)
    visual = common_pb2.RANDOMIZATION_VISUAL
    with channel:
        fill(stub, [episode(s, SIM, s % 2 == 0) for s in range(300, 308)])
        randomized = [episode(s, SIM, s % 2 == 0, randomization=visual) for s in range(308, 317)]
        fill(stub, [with_canonical(r) for r in randomized[:-1]] + randomized[-1:])
        fill(stub, [episode(s, REAL, (s // 2) % 2 == 0) for s in range(400, 412)])
    yield server
    server.stop(grace_s=0)


@pytest.fixture
def store_client(store):
    channel, stub = client.connect(store.address)
    with channel:
        yield stub


def trainer_config(tmp: Path, store: ServiceServer, **overrides) -> TrainerConfig:
    """A trainer on port 0 with state under `tmp`, fast polling, authentication on."""
    settings = {
        "port": 0,
        "grace_s": 0.0,
        "state_dir": str(tmp / "trainer"),
        "model_base": str(tmp / "models"),
        "store_address": store.address,
        "store_data_dir": store.config.data_dir,
        "auth_token": TOKEN,
        "poll_interval_s": 0.2,
        "watch_interval_s": 0.1,
        "cancel_grace_s": 2.0,
        "rollout_interval_s": 0.0,
        "k8s_api": "off",
        **overrides,
    }
    return TrainerConfig(**settings)


@pytest.fixture
def start_trainer(tmp_path: Path, store) -> Iterator[Callable[..., ServiceServer]]:
    """Starts trainers (state under tmp_path unless overridden); at the end, cancels what
    they left running and stops them."""
    servers: list[ServiceServer] = []

    def start(kubernetes_api=None, **overrides) -> ServiceServer:
        config = trainer_config(tmp_path, store, **overrides)
        server = create_server(config, kubernetes_api=kubernetes_api)
        servers.append(server)
        return server

    yield start
    jobs = set()
    for server in servers:
        with grpc.insecure_channel(server.address) as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            try:
                runs = stub.ListRuns(trainer_pb2.ListRunsRequest(page_size=500), timeout=5).runs
            except grpc.RpcError:
                continue  # stopped by the test itself
            for run in runs:
                if run.state not in TERMINAL:
                    stub.CancelRun(trainer_pb2.CancelRunRequest(run_id=run.run_id), metadata=AUTH)
                if run.job.startswith("local:"):
                    jobs.add(run.job)
        server.stop(grace_s=0)
    # Whatever a failed test left behind must not slow the tests after it.
    for handle in jobs:
        LocalBackend().cancel(handle)


def trainer_stub(server: ServiceServer):
    """A channel and Trainer stub for `server`."""
    channel = grpc.insecure_channel(server.address)
    return channel, trainer_pb2_grpc.TrainerStub(channel)


def tiny_spec(recipe: int, **gate) -> trainer_pb2.RunSpec:
    """A few dozen steps on 64x64 episodes: enough to exercise the whole path."""
    spec = trainer_pb2.RunSpec(
        recipe=recipe,
        params=trainer_pb2.TrainingParams(steps=24, batch_size=16, learning_rate=3e-3, seed=1),
        data=trainer_pb2.DataSelection(validation_fraction=0.25),
    )
    if gate:
        spec.gate.CopyFrom(trainer_pb2.GateSpec(**gate))
    return spec


def watch(stub, run_id: str, timeout_s: float = 120.0) -> list[trainer_pb2.RunEvent]:
    """Every event WatchRun streams for the run, until it ends."""
    return list(stub.WatchRun(trainer_pb2.WatchRunRequest(run_id=run_id), timeout=timeout_s))


def wait_for(predicate: Callable[[], object], timeout_s: float = 60.0, what: str = "") -> object:
    """Polls until `predicate()` is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what or predicate}")
