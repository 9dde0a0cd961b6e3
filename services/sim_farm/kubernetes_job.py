"""A collection's Indexed Job (a pod per shard running `graspfleet sim-farm shard`), and its status.

Kubernetes gives each pod its index in JOB_COMPLETION_INDEX; the pod runs that
shard of the plan (passed as JSON in its args) with the farm's settings
(passed in its environment), writing episodes straight to the store through a
spool on an emptyDir. The pod is hardened like the fleet's Deployments
(non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp)
and holds no API token. A failed shard is not retried (backoffLimitPerIndex 0)
and does not stop the others; its error is the pod's termination message.
"""

from __future__ import annotations

import hashlib
import re

from kubernetes import client as k8s

from services.common import kube
from services.common.config import env_name
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.plan import CollectionPlan

MANAGED_BY = "graspfleet-sim-farm"
NAME = "sim-farm-shard"  # app.kubernetes.io/name of the Jobs and their pods
COLLECTION_ANNOTATION = "graspfleet.io/collection-id"
# Set by the Job controller on every pod of an Indexed Job.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
SPOOL_DIR = "/var/spool/graspfleet"
TERMINATION_LOG = "/dev/termination-log"


def job_name(collection_id: str) -> str:
    """The Job of a collection: a DNS label short enough for its pods' hostnames.

    Collection ids allow capitals, '.' and '_' and 100 characters; the name keeps a
    readable prefix of the id and a hash of all of it, so two ids never share a Job.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", collection_id.lower()).strip("-")[:30].strip("-")
    digest = hashlib.sha256(collection_id.encode()).hexdigest()[:8]
    return f"sim-farm-{slug}-{digest}" if slug else f"sim-farm-{digest}"


# The labels of every collection's Job and of its pods (NetworkPolicies select on them).
LABELS = {
    "app.kubernetes.io/name": NAME,
    "app.kubernetes.io/component": "collection",
    "app.kubernetes.io/part-of": "graspfleet",
    "app.kubernetes.io/managed-by": MANAGED_BY,
}


def shard_env(config: SimFarmConfig) -> dict[str, str]:
    """The shard command's settings (services.sim_farm.config.ShardConfig) from the farm's.

    The TLS settings come with the Secret (`services.common.kube.job`): the pods trust its
    CA and present the farm's certificate, so shards write as the sim-farm's identity.
    """
    env = {
        env_name("store_address"): config.store_address,
        env_name("plan_timeout_s"): str(config.plan_timeout_s),
        env_name("spool_dir"): SPOOL_DIR,
        env_name("spool_max_bytes"): str(config.shard_spool_bytes),
        env_name("upload_stall_s"): str(config.upload_stall_s),
        env_name("termination_log"): TERMINATION_LOG,
        env_name("log_format"): "json",
        "HOME": "/tmp",
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if config.planner_address:
        env[env_name("planner_address")] = config.planner_address
    if config.refiner_address:
        env[env_name("refiner_address")] = config.refiner_address
    return env


def manifest(config: SimFarmConfig, plan: CollectionPlan, tls: bool = False) -> k8s.V1Job:
    """The Job that runs `plan`: completions = shards, parallelism = the farm's workers.

    Args:
        config: The farm's settings.
        plan: The collection's plan.
        tls: The fleet's services speak TLS: the pods mount `config.k8s_tls_secret`.
    """
    # The spool's cap plus one episode's worth of room: the shard pauses at the cap.
    spool_limit = str(2 * config.shard_spool_bytes)
    annotations = {COLLECTION_ANNOTATION: plan.collection_id}
    return kube.job(
        config,
        name=job_name(plan.collection_id),
        labels=LABELS,
        annotations=annotations,
        container="shard",
        command=["sim-farm", "shard"],
        args=["--plan", plan.to_json()],
        env=shard_env(config),
        volumes=[
            k8s.V1Volume(name="spool", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=spool_limit))
        ],
        mounts=[k8s.V1VolumeMount(name="spool", mount_path=SPOOL_DIR)],
        tmp_size_limit="1Gi",
        termination_log=TERMINATION_LOG,
        tls=tls,
        job_fields={
            "completion_mode": "Indexed",
            "completions": plan.num_shards,
            "parallelism": min(config.workers, plan.num_shards),
            # A failed shard is reported, not silently run again, and the others carry on.
            "backoff_limit_per_index": 0,
        },
    )


def parse_indexes(text: str | None) -> set[int]:
    """The indexes of a Job status list such as "1,3-5,7"."""
    found: set[int] = set()
    for part in (text or "").split(","):
        first, _, last = part.strip().partition("-")
        if first:
            found.update(range(int(first), int(last or first) + 1))
    return found


def pod_index(pod: k8s.V1Pod) -> int | None:
    """The completion index of an Indexed Job's pod (a label since 1.28, an annotation before)."""
    meta = pod.metadata
    value = (meta.labels or {}).get(INDEX_KEY) or (meta.annotations or {}).get(INDEX_KEY)
    return int(value) if value and value.isdigit() else None


def pod_failure(pod: k8s.V1Pod, index: int) -> str:
    """Why a shard's pod failed, in the shard's own words where it left any, and where to look."""
    where = f"shard {index} failed in pod {pod.metadata.namespace}/{pod.metadata.name}"
    logs_hint = f"its log: kubectl logs -n {pod.metadata.namespace} {pod.metadata.name}"
    status = pod.status or k8s.V1PodStatus()
    for container in status.container_statuses or []:
        ended = container.state.terminated if container.state else None
        if ended is not None:
            message = (ended.message or "").strip() or "no message"
            return f"{where} ({ended.reason}, exit code {ended.exit_code}): {message}; {logs_hint}"
    # Evicted, or never started: the pod's own reason.
    reason, message = status.reason or "no reason given", status.message or "no message"
    return f"{where} ({reason}): {message}; {logs_hint}"


def lost_pod_failure(namespace: str, name: str, index: int) -> str:
    """Why a shard failed when its pod is gone: the Job says so, and where the log may be."""
    return (
        f"shard {index} failed (Job {namespace}/{name}, index {index}) and its pod is gone; "
        f"its log, while kept: kubectl logs -n {namespace} -l "
        f"{JOB_NAME_LABEL}={name},{INDEX_KEY}={index}"
    )
