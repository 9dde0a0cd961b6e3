"""The Kubernetes backend: each job is a batch/v1 Job running the graspfleet container command.

The pod is hardened like the fleet's Deployments (non-root, read-only root
filesystem, no capabilities, RuntimeDefault seccomp), tolerates the taints the
config names (GPU nodes are commonly tainted `nvidia.com/gpu`), and mounts the shared
volumes from the config at the trainer's own paths, so the run folder, the
store's shards and the model base look the same to the job as to the trainer.
A Job is never retried by Kubernetes (backoffLimit 0): a failed training is
reported, not silently repeated. The handle is `kubernetes:<namespace>/<name>`,
which is all a restarted trainer needs to find the Job again.
"""

from __future__ import annotations

from pathlib import Path

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from services.common import kube, logs
from services.trainer.backends import FAILED, GONE, RUNNING, SUCCEEDED, JobSpec, JobStatus
from services.trainer.config import TrainerConfig

log = logs.get_logger(__name__)

MANAGED_BY = "graspfleet-trainer"


class KubernetesBackend:
    """Runs jobs as Kubernetes Jobs in one namespace.

    Args:
        config: Namespace, image, command, service account, resources, volumes.
        api: The API client (`kube.api_client(config.k8s_api)`, or one aimed at a test server).
    """

    name = "kubernetes"

    def __init__(self, config: TrainerConfig, api: k8s.ApiClient) -> None:
        self.config = config
        self.api = api
        self.batch = k8s.BatchV1Api(api)

    def manifest(self, job: JobSpec) -> k8s.V1Job:
        """The Job object `start` creates for `job`."""
        c = self.config
        gpus = c.k8s_gpus if job.gpus is None else job.gpus
        volumes = [
            k8s.V1Volume(
                name=f"data-{i}",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim),
            )
            for i, claim in enumerate(c.volumes)
        ]
        mounts = [
            k8s.V1VolumeMount(name=f"data-{i}", mount_path=path, read_only=_reads_only(path, c))
            for i, path in enumerate(c.volumes.values())
        ]
        tolerations = [
            k8s.V1Toleration(
                key=t.key,
                operator="Equal" if t.value else "Exists",
                value=t.value or None,
                effect=t.effect or None,
            )
            for t in c.tolerations
        ]
        return kube.job(
            c,
            name=job.name,
            labels={
                "app.kubernetes.io/name": "graspfleet-job",
                "app.kubernetes.io/managed-by": MANAGED_BY,
                **job.labels,
            },
            container="job",
            command=list(job.args),
            # The trainer's own certificate comes with the Secret: its Jobs call as it.
            env={"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "HOME": "/tmp", **job.env},
            volumes=volumes,
            mounts=mounts,
            limits={"nvidia.com/gpu": str(gpus)} if gpus else None,
            pod_fields={
                "node_selector": c.node_selector or None,
                "tolerations": tolerations or None,
            },
            # A failed training is reported, not silently repeated.
            job_fields={"backoff_limit": 0},
            cpu=job.cpu,
            memory=job.memory,
        )

    def manifest_dict(self, job: JobSpec) -> dict:
        """The Job as the API server receives it (camelCase JSON)."""
        return self.api.sanitize_for_serialization(self.manifest(job))

    def start(self, job: JobSpec) -> str:
        """Creates the job's Job, adopting one an earlier attempt created; returns its handle.

        Raises:
            RuntimeError: the API server refused the Job.
        """
        handle = f"kubernetes:{self.config.k8s_namespace}/{job.name}"
        try:
            self.batch.create_namespaced_job(
                self.config.k8s_namespace,
                self.manifest(job),
                _request_timeout=kube.REQUEST_TIMEOUT_S,
            )
        except ApiException as err:
            if err.status != 409:
                raise RuntimeError(f"creating Job {job.name}: {err.status} {err.reason}") from None
            # Created by an earlier attempt whose answer was lost: it is the same job.
            log.warning("job already exists; adopting it", extra={"job": job.name})
        log.info("job created", extra={"job": job.name, "namespace": self.config.k8s_namespace})
        return handle

    @staticmethod
    def parse(handle: str) -> tuple[str, str]:
        """(namespace, name) of a Kubernetes handle."""
        kind, _, rest = handle.partition(":")
        namespace, _, name = rest.partition("/")
        if kind != "kubernetes" or not namespace or not name:
            raise ValueError(f"{handle!r} is not a Kubernetes job handle")
        return namespace, name

    def poll(self, handle: str) -> JobStatus:
        """The Job's state from its conditions; GONE when it no longer exists."""
        namespace, name = self.parse(handle)
        try:
            job = self.batch.read_namespaced_job_status(
                name, namespace, _request_timeout=kube.REQUEST_TIMEOUT_S
            )
        except ApiException as err:
            if err.status == 404:
                return JobStatus(GONE, f"Job {namespace}/{name} no longer exists")
            raise
        status = job.status or k8s.V1JobStatus()
        for condition in status.conditions or []:
            if condition.status != "True":
                continue
            if condition.type == "Complete":
                return JobStatus(SUCCEEDED, "Job complete")
            if condition.type == "Failed":
                return JobStatus(FAILED, f"Job failed: {condition.reason}: {condition.message}")
        if status.succeeded:
            return JobStatus(SUCCEEDED, "Job complete")
        if status.failed:
            return JobStatus(FAILED, f"Job failed ({status.failed} pod failures)")
        return JobStatus(RUNNING)

    def cancel(self, handle: str) -> None:
        """Deletes the Job (its pods go with it); a Job already gone is no error."""
        namespace, name = self.parse(handle)
        try:
            # Background: the API server deletes the pods after the Job, without waiting.
            self.batch.delete_namespaced_job(
                name,
                namespace,
                propagation_policy="Background",
                _request_timeout=kube.REQUEST_TIMEOUT_S,
            )
        except ApiException as err:
            if err.status != 404:
                raise
        log.info("job deleted", extra={"job": name, "namespace": namespace})

    def reap(self) -> None:
        """Nothing to do: Kubernetes stops pods and garbage-collects finished Jobs (TTL)."""

    def jobs(self) -> list[str]:
        """Handles of every Job this backend manages in its namespace."""
        listed = self.batch.list_namespaced_job(
            self.config.k8s_namespace,
            label_selector=f"app.kubernetes.io/managed-by={MANAGED_BY}",
            _request_timeout=kube.REQUEST_TIMEOUT_S,
        )
        return [f"kubernetes:{j.metadata.namespace}/{j.metadata.name}" for j in listed.items]


def _reads_only(mount_path: str, config: TrainerConfig) -> bool:
    """Whether a Job only reads the volume at `mount_path`.

    The store's episodes (the volume holding store_data_dir) are read by training and
    evaluation, and written only by the store; the models and the runs are written by
    the Jobs.
    """
    mount = Path(mount_path)

    def holds(path: str | Path) -> bool:
        path = Path(path)
        return path == mount or mount in path.parents

    return holds(config.store_data_dir) and not (
        holds(config.model_base) or holds(config.runs_path)
    )
