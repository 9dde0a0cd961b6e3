"""The sim-farm's kubernetes backend: one Indexed Job per collection, under strict schema
validation, against a small real API server (tests/fixtures/fake_kube.py) and a real store."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import grpc
import kubernetes_validate
import pytest

from graspfleet.v1 import common_pb2, sim_farm_pb2, sim_farm_pb2_grpc
from models.episodes.synthetic import sample_episode
from services.common import upstream
from services.common.config import ConfigError
from services.episode_store import client
from services.sim_farm.kubernetes_job import job_name
from services.sim_farm.plan import CollectionPlan
from services.sim_farm.server import create_server as create_farm
from services.sim_farm.worker import episode_id, shard_robot_id
from tests.fixtures.fake_kube import FakeKubernetes, indexed_pod
from tests.fixtures.tls import make_certificate
from tests.fixtures.waiting import until
from tests.k8s.kustomize import supported_versions
from tests.sim_farm.conftest import NAMESPACE, farm_config

State = sim_farm_pb2
Policy = sim_farm_pb2.CollectionPolicy
# Five episodes in three shards: shards 0 and 1 run two, shard 2 one.
SPEC = sim_farm_pb2.CollectionSpec(
    num_episodes=5,
    num_shards=3,
    max_steps=3,
    domain=common_pb2.DOMAIN_SIM,
    policy=Policy(kind=Policy.KIND_RANDOM),
    seed=7,
)


def _start(stub, collection_id: str, spec=SPEC) -> sim_farm_pb2.Collection:
    request = sim_farm_pb2.StartCollectionRequest(spec=spec, collection_id=collection_id)
    return stub.StartCollection(request, timeout=30)


def _get(stub, collection_id: str) -> sim_farm_pb2.Collection:
    request = sim_farm_pb2.GetCollectionRequest(collection_id=collection_id)
    return stub.GetCollection(request, timeout=10)


def _wait(stub, collection_id: str, check: Callable[[sim_farm_pb2.Collection], bool]):
    """The collection once `check` holds for it (polled: the farm follows the Job on its own)."""
    seen: list[sim_farm_pb2.Collection] = []

    def holds() -> bool:
        seen.append(_get(stub, collection_id))
        return check(seen[-1])

    assert until(holds, timeout_s=20), f"the collection stayed {seen[-1]}"
    return seen[-1]


def _job(kube: FakeKubernetes, collection_id: str) -> dict:
    return kube.jobs[(NAMESPACE, job_name(collection_id))]


def _store_shard(store, collection_id: str, shard: int, indexes: range, successes: int) -> None:
    """Episodes of a shard written as its pod would: the shard's robot id, the collection's ids."""
    channel, stub = client.connect(store.address)
    with channel:
        for n, index in enumerate(indexes):
            record = sample_episode(
                index,
                episode_id=episode_id(collection_id, shard, index),
                robot_id=shard_robot_id(shard),
                num_steps=2,
                image_size=32,
            )
            record.header.collection_id = collection_id
            record.outcome.result = (
                common_pb2.GRASP_RESULT_SUCCESS
                if n < successes
                else common_pb2.GRASP_RESULT_FAILURE
            )
            client.write_episode(stub, record)


def test_a_collection_is_one_indexed_job_that_validates_strictly(start_farm, kube, store):
    stub = start_farm()
    started = _start(stub, "Grasp_Study.v1")
    assert started.state == State.COLLECTION_STATE_PENDING and len(started.shards) == 3
    (create,) = [r for r in kube.requests if r.method == "POST"]
    assert create.path == f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    job = create.body
    for version in supported_versions():  # what the client really sent
        kubernetes_validate.validate(job, version, strict=True)
    name = job["metadata"]["name"]
    assert name == job_name("Grasp_Study.v1") and len(name) <= 52
    assert job["metadata"]["annotations"] == {"graspfleet.io/collection-id": "Grasp_Study.v1"}
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"], spec["backoffLimitPerIndex"]) == (3, 2, 0)
    labels = spec["template"]["metadata"]["labels"]
    assert labels == job["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "sim-farm-shard"
    assert labels["app.kubernetes.io/managed-by"] == "graspfleet-sim-farm"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "graspfleet-sim-farm-shard"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/graspfleet:0.1.0"
    assert container["command"] == ["graspfleet", "sim-farm", "shard"]
    flag, plan_json = container["args"]
    plan = CollectionPlan.from_json(plan_json)
    assert flag == "--plan" and plan.collection_id == "Grasp_Study.v1"
    assert (plan.num_episodes, plan.num_shards, plan.seed, plan.policy) == (5, 3, 7, "random")
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GRASPFLEET_STORE_ADDRESS"] == store.address
    assert env["GRASPFLEET_PLANNER_ADDRESS"] == "servo-planner:50053"
    assert env["GRASPFLEET_TERMINATION_LOG"] == container["terminationMessagePath"]
    # Kubernetes sets the shard's index; the farm must not.
    assert "JOB_COMPLETION_INDEX" not in env
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[env["GRASPFLEET_SPOOL_DIR"]]]
    assert "emptyDir" in volumes[mounts["/tmp"]]

    # A retry with the same id is the same collection: no second Job.
    assert _start(stub, "Grasp_Study.v1").collection_id == "Grasp_Study.v1"
    assert len([r for r in kube.requests if r.method == "POST"]) == 1
    # Strict validation is not a formality: an unknown field fails it.
    container["colour"] = "blue"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)


def test_get_collection_follows_the_job_status_and_the_store(start_farm, kube, store):
    stub = start_farm()
    _start(stub, "c2")
    name = job_name("c2")
    _store_shard(store, "c2", 0, range(0, 2), successes=1)
    kube.add_pod(indexed_pod(NAMESPACE, name, 1, "Running"))
    kube.set_status(NAMESPACE, name, {"active": 2, "completedIndexes": "0", "succeeded": 1})
    running = _wait(stub, "c2", lambda c: c.shards[1].state == State.COLLECTION_STATE_RUNNING)
    first, second, third = running.shards
    assert running.state == State.COLLECTION_STATE_RUNNING
    assert first.state == State.COLLECTION_STATE_SUCCEEDED
    assert (first.episodes_done, first.successes, first.episodes_target) == (2, 1, 2)
    assert second.worker == f"{name}-1-abcde"
    assert third.state == State.COLLECTION_STATE_PENDING
    assert (running.episodes_done, running.successes) == (2, 1)

    _store_shard(store, "c2", 1, range(2, 4), successes=2)
    _store_shard(store, "c2", 2, range(4, 5), successes=0)
    kube.set_status(
        NAMESPACE,
        name,
        {
            "completedIndexes": "0-2",
            "succeeded": 3,
            "conditions": [{"type": "Complete", "status": "True"}],
        },
    )
    done = _wait(stub, "c2", lambda c: c.state == State.COLLECTION_STATE_SUCCEEDED)
    assert (done.episodes_done, done.successes) == (5, 3)
    assert [s.episodes_done for s in done.shards] == [2, 2, 1]
    assert done.HasField("finished_at")


def test_a_failed_index_fails_its_shard_with_the_pods_own_words(start_farm, kube):
    stub = start_farm()
    _start(stub, "c3")
    name = job_name("c3")
    error = (
        "StoreStalled: the episode store at episode-store:50051 took none of this shard's "
        "3 spooled episodes for 300 s"
    )
    kube.add_pod(
        indexed_pod(NAMESPACE, name, 1, "Failed", exit_code=1, reason="Error", message=error)
    )
    kube.set_status(NAMESPACE, name, {"active": 2, "failed": 1, "failedIndexes": "1"})
    failing = _wait(stub, "c3", lambda c: c.shards[1].state == State.COLLECTION_STATE_FAILED)
    shard = failing.shards[1]
    assert error in shard.error and "exit code 1" in shard.error
    assert f"kubectl logs -n {NAMESPACE} {name}-1-abcde" in shard.error
    # The other shards carry on: the collection has not failed yet.
    assert failing.state == State.COLLECTION_STATE_RUNNING

    # A shard whose pod is gone already: the Job's word, and where its log may still be.
    kube.set_status(
        NAMESPACE,
        name,
        {
            "failed": 2,
            "failedIndexes": "1,2",
            "completedIndexes": "0",
            "conditions": [
                {"type": "Failed", "status": "True", "reason": "FailedIndexes", "message": "2"}
            ],
        },
    )
    failed = _wait(stub, "c3", lambda c: c.state == State.COLLECTION_STATE_FAILED)
    states = [s.state for s in failed.shards]
    assert states == [
        State.COLLECTION_STATE_SUCCEEDED,
        State.COLLECTION_STATE_FAILED,
        State.COLLECTION_STATE_FAILED,
    ]
    assert "batch.kubernetes.io/job-completion-index=2" in failed.shards[2].error
    assert failed.error == shard.error


def test_an_evicted_pod_and_a_job_past_its_deadline_say_so(start_farm, kube):
    stub = start_farm(k8s_deadline_s=600)
    _start(stub, "c4")
    name = job_name("c4")
    assert _job(kube, "c4")["spec"]["activeDeadlineSeconds"] == 600
    kube.add_pod(
        indexed_pod(NAMESPACE, name, 0, "Failed", reason="Evicted", message="low on ephemeral")
    )
    kube.set_status(
        NAMESPACE,
        name,
        {
            "failedIndexes": "0",
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                }
            ],
        },
    )
    failed = _wait(stub, "c4", lambda c: c.state == State.COLLECTION_STATE_FAILED)
    assert "(Evicted): low on ephemeral" in failed.shards[0].error
    for shard in failed.shards[1:]:
        assert f"Job {NAMESPACE}/{name} failed: DeadlineExceeded" in shard.error


def test_stop_collection_deletes_the_job(start_farm, kube):
    stub = start_farm()
    _start(stub, "c5")
    name = job_name("c5")
    kube.add_pod(indexed_pod(NAMESPACE, name, 0, "Running"))
    _wait(stub, "c5", lambda c: c.state == State.COLLECTION_STATE_RUNNING)
    stub.StopCollection(sim_farm_pb2.StopCollectionRequest(collection_id="c5"), timeout=30)
    (delete,) = [r for r in kube.requests if r.method == "DELETE"]
    assert delete.path == f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}"
    assert delete.query == {"propagationPolicy": "Background"}
    assert (NAMESPACE, name) not in kube.jobs and not kube.pods
    stopped = _wait(stub, "c5", lambda c: c.state == State.COLLECTION_STATE_STOPPED)
    assert {s.state for s in stopped.shards} == {State.COLLECTION_STATE_STOPPED}


def test_a_job_deleted_behind_the_farms_back_fails_its_shards(start_farm, kube):
    stub = start_farm()
    _start(stub, "c6")
    kube.delete(NAMESPACE, job_name("c6"))
    failed = _wait(stub, "c6", lambda c: c.state == State.COLLECTION_STATE_FAILED)
    assert "was deleted before the shard ended" in failed.error
    assert "skip_stored" in failed.error


def test_a_restarted_farm_adopts_the_job_of_its_collection(start_farm, kube, store):
    first = start_farm()
    _start(first, "c7")
    second = start_farm()  # e.g. the farm's pod moved to another node
    _start(second, "c7")
    assert len([r for r in kube.requests if r.method == "POST"]) == 2
    assert len(kube.jobs) == 1
    for shard, indexes in enumerate(((0, 1), (2, 3), (4,))):
        _store_shard(store, "c7", shard, range(indexes[0], indexes[-1] + 1), successes=1)
    kube.set_status(NAMESPACE, job_name("c7"), {"completedIndexes": "0-2", "succeeded": 3})
    done = _wait(second, "c7", lambda c: c.state == State.COLLECTION_STATE_SUCCEEDED)
    assert (done.episodes_done, done.successes) == (5, 3)


def test_job_names_are_dns_labels_and_never_shared():
    ids = ["c1", "C1", "a" * 100, "Grasp_Study.v1", "9.x_y-z", "__"]
    names = [job_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    for name in names:
        # Room for the pods' hostnames (<job>-<index>) within a 63-character label.
        assert len(name) <= 52 and name == name.lower() and name[0].isalpha(), name
        assert all(c.isalnum() or c == "-" for c in name) and not name.endswith("-"), name


def test_plans_round_trip_and_a_bad_plan_is_refused():
    plan = CollectionPlan(
        collection_id="c",
        num_episodes=5,
        num_shards=3,
        seed=2**62,
        max_steps=3,
        domain="sim",
        randomization="visual",
        object_set="train",
        objects_per_bin=5,
        policy="eps-mix",
        epsilon=0.25,
        model_label="stable",
        model_version=0,
        width=64,
        height=64,
        render_masks=True,
        render_canonical=False,
        arm_config_yaml="id: a\n",
    )
    assert CollectionPlan.from_json(plan.to_json()) == plan
    assert [list(plan.shard_episodes(k)) for k in range(3)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(IndexError, match="shards 0 to 2"):
        plan.shard_episodes(3)
    data = dataclasses.asdict(plan)
    for bad, fragment in (
        ({**data, "colour": 1}, "unknown fields ['colour']"),
        ({k: v for k, v in data.items() if k != "seed"}, "lacks fields ['seed']"),
        ({**data, "num_shards": "3"}, "num_shards='3' is not a int"),
        ({**data, "render_masks": 1}, "render_masks=1 is not a bool"),
        ({**data, "num_shards": 9}, "num_shards=9"),
    ):
        with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            CollectionPlan.from_json(json.dumps(bad))
    with pytest.raises(ValueError, match="not JSON"):
        CollectionPlan.from_json("{")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"collection_backend": "k8s"}, "collection_backend='k8s': use one of local, kubernetes"),
        ({"k8s_api": "off"}, "k8s_api='off': use one of auto, in-cluster, kubeconfig"),
        ({"k8s_namespace": "Grasp_Fleet"}, "k8s_namespace='Grasp_Fleet' is not a Kubernetes"),
        ({"k8s_service_account": ""}, "k8s_service_account='' is not a Kubernetes object name"),
        ({"k8s_tls_secret": "TLS!"}, "k8s_tls_secret='TLS!'"),
        ({"k8s_cpu": "two"}, "k8s_cpu='two' is not a Kubernetes quantity"),
        ({"k8s_memory": "2 GB"}, "k8s_memory='2 GB' is not a Kubernetes quantity"),
        ({"k8s_image": " "}, "k8s_image must name the image"),
        ({"k8s_command": ()}, "k8s_command must name the program"),
        ({"k8s_ttl_s": -1}, "k8s_ttl_s=-1"),
        ({"poll_interval_s": 0}, "poll_interval_s=0 must be positive"),
    ],
)
def test_bad_kubernetes_settings_are_refused_clearly(tmp_path, overrides, fragment):
    with pytest.raises(ConfigError) as refused:
        farm_config(tmp_path, "episode-store:50051", **overrides)
    assert fragment in str(refused.value)


def test_shard_pods_dial_tls_when_the_farm_does(tmp_path, kube, monkeypatch):
    plain = create_farm(
        farm_config(tmp_path, "episode-store:50051"), kubernetes_api=kube.api_client()
    )
    make_certificate(tmp_path / "tls")
    monkeypatch.setenv(upstream.TLS_CA_ENV, str(tmp_path / "tls" / "tls.crt"))
    secure = create_farm(
        farm_config(tmp_path, "episode-store:50051"), kubernetes_api=kube.api_client()
    )
    try:
        for server, collection_id in ((plain, "plain"), (secure, "secure")):
            with grpc.insecure_channel(server.address) as channel:
                _start(sim_farm_pb2_grpc.SimFarmStub(channel), collection_id)
    finally:
        plain.stop(grace_s=0)
        secure.stop(grace_s=0)
    for collection_id, secret in (("plain", None), ("secure", "graspfleet-tls")):
        job = _job(kube, collection_id)
        kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
        assert secrets == ([secret] if secret else []), collection_id
        if secret:
            assert env[upstream.TLS_CA_ENV] == "/etc/graspfleet/tls/ca.crt"
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            tls = next(v["name"] for v in pod["volumes"] if "secret" in v)
            assert mounts[tls]["mountPath"] == "/etc/graspfleet/tls" and mounts[tls]["readOnly"]
        else:
            assert upstream.TLS_CA_ENV not in env


def test_a_farm_without_an_api_server_says_how_to_give_it_one(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for mode in ("auto", "kubeconfig", "in-cluster"):
        config = farm_config(tmp_path, "episode-store:50051", k8s_api=mode)
        with pytest.raises(ConfigError, match=f"k8s_api={mode} finds no API server"):
            create_farm(config)
