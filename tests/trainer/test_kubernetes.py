"""The Kubernetes backend: Job objects under strict schema validation, and the Job calls
against a small real API server (tests/fixtures/fake_kube.py) on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes import client

from graspfleet.v1 import trainer_pb2 as S
from services.trainer.backends import FAILED, GONE, RUNNING, SUCCEEDED, JobSpec
from services.trainer.config import TrainerConfig
from services.trainer.job import files as jobfiles
from services.trainer.kubernetes_backend import KubernetesBackend
from services.trainer.supervisor import job_spec
from tests.fixtures.fake_kube import FakeKubernetes
from tests.trainer.conftest import AUTH, tiny_spec, trainer_stub, wait_for, watch

VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33", kubernetes_validate.latest_version()]
NAMESPACE = "graspfleet"
JOB = JobSpec(
    name="graspfleet-train-run-1",
    args=("train", "job", "--run-dir", "/var/lib/graspfleet/runs/run-1"),
    labels={"graspfleet.io/run-id": "run-1"},
)


def _config(**overrides) -> TrainerConfig:
    settings = {
        "store_address": "episode-store:50051",
        "store_data_dir": "/var/lib/graspfleet/store",
        "k8s_volumes": (
            "episode-shards=/var/lib/graspfleet/store",
            "models=/var/lib/graspfleet/models",
        ),
        **overrides,
    }
    return TrainerConfig(**settings)


@pytest.fixture
def fake():
    server = FakeKubernetes()
    yield server
    server.close()


VARIANTS = {
    "cpu": {},
    "gpu": {"k8s_gpus": 1, "k8s_deadline_s": 7200, "k8s_node_selector": ("accelerator=h100",)},
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", VERSIONS)
def test_job_objects_pass_strict_schema_validation(version, variant):
    backend = KubernetesBackend(_config(**VARIANTS[variant]), client.ApiClient())
    job = backend.manifest_dict(JOB)
    kubernetes_validate.validate(job, version, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "services.cli", *JOB.args]
    assert (
        container["securityContext"]["readOnlyRootFilesystem"]
        and pod["securityContext"]["runAsNonRoot"]
    )
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/lib/graspfleet/store", "/var/lib/graspfleet/models", "/tmp"} == mounts
    # Strict validation is not a formality: an unknown field fails it.
    container["colour"] = "blue"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, version, strict=True)


def test_an_evaluation_job_is_a_small_pod_that_knows_the_farm_and_the_store():
    """It only follows the farm's collections: no GPU, even where training Jobs get one."""
    config = _config(sim_farm_address="sim-farm:50052", runs_dir="/tmp/x", **VARIANTS["gpu"])
    run = S.Run(run_id="eval-1", spec=S.RunSpec(recipe=S.RECIPE_EVALUATION))
    job = KubernetesBackend(config, client.ApiClient()).manifest_dict(job_spec(config, run))
    kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GRASPFLEET_SIM_FARM_ADDRESS"] == "sim-farm:50052"
    assert env["GRASPFLEET_STORE_ADDRESS"] == "episode-store:50051"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "evaluation"
    assert container["command"][-4:] == ["train", "job", "--run-dir", "/tmp/x/eval-1"]


def test_create_poll_and_delete_jobs_against_an_api_server(fake):
    backend = KubernetesBackend(_config(), fake.api_client())
    handle = backend.start(JOB)
    assert handle == f"kubernetes:{NAMESPACE}/{JOB.name}"
    (create,) = [r for r in fake.requests if r.method == "POST"]
    assert create.path == f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    for version in VERSIONS:  # what the client really sent
        kubernetes_validate.validate(create.body, version, strict=True)
    assert backend.poll(handle).state == RUNNING
    assert backend.start(JOB) == handle  # created before, answer lost: adopted, not duplicated
    assert backend.jobs() == [handle]

    fake.set_status(
        NAMESPACE,
        JOB.name,
        {
            "failed": 1,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "too long",
                }
            ],
        },
    )
    failed = backend.poll(handle)
    assert failed.state == FAILED and "DeadlineExceeded" in failed.detail
    fake.set_status(
        NAMESPACE,
        JOB.name,
        {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    )
    assert backend.poll(handle).state == SUCCEEDED

    backend.cancel(handle)
    (delete,) = [r for r in fake.requests if r.method == "DELETE"]
    assert delete.path.endswith(f"/jobs/{JOB.name}")
    assert delete.query == {"propagationPolicy": "Background"}
    assert backend.poll(handle).state == GONE
    backend.cancel(handle)  # already gone: not an error
    assert backend.jobs() == []


def _job_of(fake: FakeKubernetes, run: S.Run) -> dict:
    name = run.job.rpartition("/")[2]
    return fake.jobs[(NAMESPACE, name)]


def test_the_trainer_runs_cancels_and_re_adopts_kubernetes_jobs(start_trainer, fake):
    settings = {"max_concurrent_runs": 4, "default_backend": "kubernetes"}
    server = start_trainer(kubernetes_api=fake.api_client(), **settings)
    channel, stub = trainer_stub(server)
    with channel:
        ids = [
            stub.SubmitRun(S.SubmitRunRequest(spec=tiny_spec(S.RECIPE_DANN)), metadata=AUTH).run_id
            for _ in range(4)
        ]

        def running():
            runs = [stub.GetRun(S.GetRunRequest(run_id=i)) for i in ids]
            return runs if all(r.state == S.RUN_STATE_RUNNING for r in runs) else None

        deadline, cancel, adopt, lose = wait_for(running, 10, "four Jobs")
        for run in (deadline, cancel, adopt, lose):
            assert run.job == f"kubernetes:{NAMESPACE}/graspfleet-train-{run.run_id}"
            container = _job_of(fake, run)["spec"]["template"]["spec"]["containers"][0]
            run_dir = Path(container["command"][-1])
            # The same container command the local backend runs, aimed at the run's folder.
            assert container["command"] == [
                "python",
                "-m",
                "services.cli",
                "train",
                "job",
                "--run-dir",
                str(run_dir),
            ]
            assert (run_dir / jobfiles.JOB_FILE).is_file() and run_dir.name == run.run_id

        fake.set_status(
            NAMESPACE,
            f"graspfleet-train-{deadline.run_id}",
            {
                "failed": 1,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "active too long",
                    }
                ],
            },
        )
        final = watch(stub, deadline.run_id)[-1].run
        assert final.state == S.RUN_STATE_FAILED and "DeadlineExceeded" in final.message

        stub.CancelRun(S.CancelRunRequest(run_id=cancel.run_id), metadata=AUTH)
        assert (NAMESPACE, f"graspfleet-train-{cancel.run_id}") not in fake.jobs
        delete = [r for r in fake.requests if r.method == "DELETE"][-1]
        assert delete.query == {"propagationPolicy": "Background"}
    server.stop(grace_s=0)

    fake.delete(NAMESPACE, f"graspfleet-train-{lose.run_id}")  # e.g. deleted by hand meanwhile
    channel, stub = trainer_stub(start_trainer(kubernetes_api=fake.api_client(), **settings))
    with channel:
        lost = stub.GetRun(S.GetRunRequest(run_id=lose.run_id))
        assert lost.state == S.RUN_STATE_FAILED and "no longer exists" in lost.message
        # The pod reports through the shared run folder, as the real job does, then completes.
        run_dir = Path(
            _job_of(fake, adopt)["spec"]["template"]["spec"]["containers"][0]["command"][-1]
        )
        jobfiles.write_result(
            run_dir, jobfiles.Result("REJECTED", "accuracy 0.5 vs stable 0.9", {"gate_samples": 20})
        )
        fake.set_status(NAMESPACE, f"graspfleet-train-{adopt.run_id}", {"succeeded": 1})
        events = watch(stub, adopt.run_id)
        assert events[-1].run.state == S.RUN_STATE_REJECTED
        assert events[-1].run.message == "accuracy 0.5 vs stable 0.9"
        assert any(
            e.log_line == f"re-adopted job {adopt.job} after a trainer restart" for e in events
        )


def test_with_a_tls_secret_job_pods_trust_the_fleets_ca():
    config = _config(sim_farm_address="sim-farm:50052", k8s_tls_secret="graspfleet-tls")
    run = S.Run(run_id="eval-1", spec=S.RunSpec(recipe=S.RECIPE_EVALUATION))
    job = KubernetesBackend(config, client.ApiClient()).manifest_dict(job_spec(config, run))
    kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GRASPFLEET_TLS_CA"] == "/etc/graspfleet/tls/ca.crt"
    assert {"name": "tls", "mountPath": "/etc/graspfleet/tls", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {"name": "tls", "secret": {"secretName": "graspfleet-tls"}} in pod["volumes"]
