"""`graspfleet sim-farm shard`, the kubernetes backend's entry point, run as a local process:
it writes the same episodes as the local backend, and a failure reaches the termination log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from graspfleet.v1 import common_pb2, episode_store_pb2, sim_farm_pb2, sim_farm_pb2_grpc
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.kubernetes_job import job_name
from services.sim_farm.plan import CollectionPlan
from services.sim_farm.server import create_server as create_farm
from services.sim_farm.shard import STOPPED_EXIT
from services.sim_farm.worker import shard_robot_id
from tests.fixtures.fake_kube import FakeKubernetes
from tests.fixtures.waiting import until
from tests.sim_farm.conftest import NAMESPACE, farm_config

ROOT = Path(__file__).resolve().parents[2]
Policy = sim_farm_pb2.CollectionPolicy
SPEC = sim_farm_pb2.CollectionSpec(
    num_episodes=4,
    num_shards=2,
    max_steps=3,
    domain=common_pb2.DOMAIN_SIM,
    randomization=common_pb2.RANDOMIZATION_VISUAL,
    policy=Policy(kind=Policy.KIND_RANDOM),
    seed=11,
)


def _run_pod(container: dict, tmp: Path, **env) -> subprocess.CompletedProcess:
    """A shard pod's container as a local process: its command and args, its environment with
    the spool and termination log moved under `tmp`, plus `env` (JOB_COMPLETION_INDEX)."""
    command = container["command"]
    assert command[0] == "graspfleet"
    environment = {
        **os.environ,
        **{e["name"]: e["value"] for e in container["env"]},
        "GRASPFLEET_SPOOL_DIR": str(tmp / "spool"),
        "GRASPFLEET_TERMINATION_LOG": str(tmp / "termination-log"),
        "HOME": str(tmp),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *command[1:], *container["args"]],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _episodes(address: str, collection_id: str, shard: int) -> dict[str, tuple]:
    """episode id -> (seed, result, steps, x0 bytes) of one shard's stored episodes."""
    channel, stub = client.connect(address)
    with channel:
        found = {}
        flt = episode_store_pb2.EpisodeFilter(collection_id=collection_id)
        for summary in client.list_all(stub, flt):
            if summary.robot_id != shard_robot_id(shard):
                continue
            full = stub.GetEpisode(
                episode_store_pb2.GetEpisodeRequest(
                    episode_id=summary.episode_id, include_steps=True
                )
            )
            found[summary.episode_id] = (
                summary.seed,
                summary.result,
                len(full.steps),
                full.header.x0.data,
            )
        return found


def _wait(stub, collection_id: str, state: int) -> sim_farm_pb2.Collection:
    request = sim_farm_pb2.GetCollectionRequest(collection_id=collection_id)
    seen = []
    assert until(lambda: seen.append(stub.GetCollection(request)) or seen[-1].state == state, 120)
    return seen[-1]


def test_a_shard_pod_writes_the_same_episodes_as_a_local_worker(tmp_path):
    """Shard 1 of one collection spec: once by the local backend, once by the command the
    kubernetes backend's Job runs (JOB_COMPLETION_INDEX=1), each into its own store."""
    local_store = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "a"), grace_s=0))
    pod_store = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "b"), grace_s=0))
    kube = FakeKubernetes()
    farms = []
    try:
        farms.append(
            create_farm(
                SimFarmConfig(
                    port=0,
                    grace_s=0,
                    store_address=local_store.address,
                    spool_dir=str(tmp_path / "spool"),
                    workers=2,
                )
            )
        )
        farms.append(
            create_farm(farm_config(tmp_path, pod_store.address), kubernetes_api=kube.api_client())
        )
        request = sim_farm_pb2.StartCollectionRequest(spec=SPEC, collection_id="same")
        local_channel = grpc.insecure_channel(farms[0].address)
        pods_channel = grpc.insecure_channel(farms[1].address)
        with local_channel, pods_channel:
            local, pods = (
                sim_farm_pb2_grpc.SimFarmStub(local_channel),
                sim_farm_pb2_grpc.SimFarmStub(pods_channel),
            )
            local.StartCollection(request)
            pods.StartCollection(request)
            done = _wait(local, "same", sim_farm_pb2.COLLECTION_STATE_SUCCEEDED)
            assert done.episodes_done == 4, done.error

            job = kube.jobs[(NAMESPACE, job_name("same"))]
            (container,) = job["spec"]["template"]["spec"]["containers"]
            ran = _run_pod(container, tmp_path, JOB_COMPLETION_INDEX="1")
            assert ran.returncode == 0, ran.stderr[-3000:]
            assert not (tmp_path / "termination-log").exists()

            # The farm counts what the pod stored once the Job calls the index complete.
            kube.set_status(NAMESPACE, job_name("same"), {"completedIndexes": "1"})

            def counted() -> bool:
                shard = pods.GetCollection(
                    sim_farm_pb2.GetCollectionRequest(collection_id="same")
                ).shards[1]
                return shard.state == sim_farm_pb2.COLLECTION_STATE_SUCCEEDED and (
                    shard.episodes_done == 2
                )

            assert until(counted, 20)
        expected = _episodes(local_store.address, "same", 1)
        assert sorted(expected) == ["same-s001-e000002", "same-s001-e000003"]
        assert _episodes(pod_store.address, "same", 1) == expected
        assert all(x0 and steps for _, _, steps, x0 in expected.values())
    finally:
        for server in (*farms, local_store, pod_store):
            server.stop(grace_s=0)
        kube.close()


def _plan(**overrides) -> CollectionPlan:
    settings = {
        "collection_id": "cmd",
        "num_episodes": 3,
        "num_shards": 1,
        "seed": 3,
        "max_steps": 2,
        "domain": "sim",
        "randomization": "none",
        "object_set": "train",
        "objects_per_bin": 3,
        "policy": "random",
        "epsilon": 0.0,
        "model_label": "",
        "model_version": 0,
        "width": 64,
        "height": 64,
        "render_masks": False,
        "render_canonical": False,
        **overrides,
    }
    return CollectionPlan(**settings)


def _container(plan: CollectionPlan, store_address: str, **env) -> dict:
    settings = {"GRASPFLEET_STORE_ADDRESS": store_address, **env}
    return {
        "command": ["graspfleet", "sim-farm", "shard"],
        "args": ["--plan", plan.to_json()],
        "env": [{"name": k, "value": v} for k, v in settings.items()],
    }


def test_a_failed_shard_writes_its_error_to_the_termination_log(tmp_path):
    # A store that went away: the shard spools one episode (its cap), waits, and gives up.
    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))
    address = store.address
    store.stop(grace_s=0)
    container = _container(
        _plan(), address, GRASPFLEET_SPOOL_MAX_BYTES="1", GRASPFLEET_UPLOAD_STALL_S="1"
    )
    started = time.monotonic()
    ran = _run_pod(container, tmp_path, JOB_COMPLETION_INDEX="0")
    assert ran.returncode == 1, ran.stderr[-3000:]
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith("StoreStalled: the episode store at " + address)
    assert "took none of this shard's 1 spooled episodes" in message
    assert time.monotonic() - started < 120


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({}, "JOB_COMPLETION_INDEX=''"),
        ({"JOB_COMPLETION_INDEX": "x"}, "JOB_COMPLETION_INDEX='x'"),
        ({"JOB_COMPLETION_INDEX": "1"}, "collection cmd has shards 0 to 0"),
    ],
)
def test_a_shard_command_without_its_shard_says_so(tmp_path, monkeypatch, env, fragment):
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    ran = _run_pod(_container(_plan(), "127.0.0.1:1"), tmp_path, **env)
    assert ran.returncode == 2 and fragment in ran.stderr, ran.stderr[-2000:]


def test_a_stopped_shard_exits_as_sigterm_says(tmp_path):
    """Deleting the Job sends SIGTERM: the shard ends after its episode, not as complete."""
    assert STOPPED_EXIT == 143
    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store"), grace_s=0))
    try:
        container = _container(_plan(num_episodes=200), store.address)
        environment = {
            **os.environ,
            "GRASPFLEET_STORE_ADDRESS": store.address,
            "GRASPFLEET_SPOOL_DIR": str(tmp_path / "spool"),
            "JOB_COMPLETION_INDEX": "0",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *container["command"][1:], *container["args"]],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            channel, stub = client.connect(store.address)
            with channel:
                flt = episode_store_pb2.EpisodeFilter(collection_id="cmd")
                assert until(lambda: any(client.list_all(stub, flt)), 120)
            process.terminate()
            assert process.wait(timeout=60) == STOPPED_EXIT, process.stderr.read()[-2000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        store.stop(grace_s=0)


def test_a_plans_fingerprint_is_what_decides_its_episodes():
    plan = _plan()
    # Resuming (skip_stored) or renaming changes no episode; a model or seed does.
    assert _plan(skip_stored=True).fingerprint() == plan.fingerprint()
    assert _plan(collection_id="other").fingerprint() == plan.fingerprint()
    assert _plan(seed=plan.seed + 1).fingerprint() != plan.fingerprint()
    assert _plan(policy="oracle").fingerprint() != plan.fingerprint()
