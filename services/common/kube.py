"""What every Job graspfleet creates shares: the API client, request deadline and pod hardening.

The trainer (training and evaluation Jobs) and the sim-farm (collection Jobs)
both create Jobs through the official client; their pods run the same image
under the same restrictions as the Deployments in k8s/base.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from services.common.upstream import TLS_CA_ENV, TLS_CLIENT_DIR_ENV

NONROOT_UID = 65532  # the image's user (the Dockerfile's distroless "nonroot")
# Seconds an API call may take: an unreachable API server must not stall a service.
REQUEST_TIMEOUT_S = 30
TLS_DIR = "/etc/graspfleet/tls"  # where the tls component mounts the Secret in every pod


def api_client(mode: str) -> k8s.ApiClient | None:
    """An API client from the in-cluster service account or ~/.kube/config; None when off.

    Args:
        mode: "auto" (in-cluster, else kubeconfig), "in-cluster", "kubeconfig" or "off".

    Raises:
        kubernetes.config.ConfigException: the chosen mode has no configuration.
    """
    if mode == "off":
        return None
    configuration = k8s.Configuration()
    if mode in ("auto", "in-cluster"):
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s.ApiClient(configuration)
        except k8s_config.ConfigException:
            if mode == "in-cluster":
                raise
    k8s_config.load_kube_config(client_configuration=configuration)
    return k8s.ApiClient(configuration)


def container_security() -> k8s.V1SecurityContext:
    """A Job container's restrictions: no privilege escalation, read-only root, no capabilities."""
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
    )


def pod_security() -> k8s.V1PodSecurityContext:
    """A Job pod's restrictions: the image's non-root user, the runtime's default seccomp profile."""
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=NONROOT_UID,
        run_as_group=NONROOT_UID,
        fs_group=NONROOT_UID,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def job(
    config: Any,
    *,
    name: str,
    labels: dict[str, str],
    container: str,
    command: list[str],
    env: dict[str, str],
    args: list[str] | None = None,
    volumes: list[k8s.V1Volume] | None = None,
    mounts: list[k8s.V1VolumeMount] | None = None,
    limits: dict[str, str] | None = None,
    tmp_size_limit: str | None = None,
    annotations: dict[str, str] | None = None,
    termination_log: str = "",
    pod_fields: dict | None = None,
    job_fields: dict | None = None,
    cpu: str = "",
    memory: str = "",
    tls: bool = True,
) -> k8s.V1Job:
    """A graspfleet Job: one hardened container running the image's command with `args`.

    Every Job the trainer and the sim-farm create comes from here: the service's
    `k8s_*` settings (`services.common.config.check_job_settings`) give its
    namespace, image, command, service account, CPU and memory, TTL and deadline;
    the pod runs as the image's non-root user with a read-only root filesystem, no
    capabilities, no API token and no restarts; /tmp is an emptyDir; with
    `k8s_tls_secret`, the Secret is mounted read-only at TLS_DIR and the pods
    trust its CA and present its certificate (the creator's identity).

    Args:
        config: The creating service's config (its `k8s_*` settings).
        name: The Job's name.
        labels: The Job's and its pods' labels (NetworkPolicies and the admission
            policy select on them).
        container: The container's name.
        command: The words after the configured command (`k8s_command`).
        env: The container's environment (TLS variables are added with the Secret).
        args: The container's args; None for none.
        volumes: Volumes before /tmp's and the Secret's.
        mounts: Their mounts.
        limits: Limits beyond CPU and memory (e.g. nvidia.com/gpu).
        tmp_size_limit: /tmp's size limit; None for none.
        annotations: The Job's and its pods' annotations.
        termination_log: Where the container writes why it failed; "" for the default.
        pod_fields: Further V1PodSpec fields (node_selector, tolerations).
        job_fields: Further V1JobSpec fields (backoff, completions, parallelism).
        cpu: The pod's CPU request and limit; "" for `k8s_cpu`.
        memory: Its memory request and limit; "" for `k8s_memory`.
        tls: Mount `k8s_tls_secret` (when set); False where the fleet speaks no TLS.
    """
    c = config
    resources = {"cpu": cpu or c.k8s_cpu, "memory": memory or c.k8s_memory}
    env = dict(env)
    volumes = [
        *(volumes or []),
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=tmp_size_limit)),
    ]
    mounts = [*(mounts or []), k8s.V1VolumeMount(name="tmp", mount_path="/tmp")]
    if tls and c.k8s_tls_secret:
        # The whole Secret as a folder (a renewed CA reaches running pods), read-only.
        volumes.append(
            k8s.V1Volume(name="tls", secret=k8s.V1SecretVolumeSource(secret_name=c.k8s_tls_secret))
        )
        mounts.append(k8s.V1VolumeMount(name="tls", mount_path=TLS_DIR, read_only=True))
        env[TLS_CA_ENV] = f"{TLS_DIR}/ca.crt"
        env[TLS_CLIENT_DIR_ENV] = TLS_DIR
    termination = {}
    if termination_log:
        # A crash before the program could write there shows the log's tail instead.
        termination = {
            "termination_message_path": termination_log,
            "termination_message_policy": "FallbackToLogsOnError",
        }
    pod = k8s.V1PodSpec(
        restart_policy="Never",
        service_account_name=c.k8s_service_account,
        automount_service_account_token=False,
        containers=[
            k8s.V1Container(
                name=container,
                image=c.k8s_image,
                image_pull_policy="IfNotPresent",
                command=[*c.k8s_command, *command],
                args=args,
                env=[k8s.V1EnvVar(name=k, value=v) for k, v in sorted(env.items())],
                resources=k8s.V1ResourceRequirements(
                    requests=resources, limits={**resources, **(limits or {})}
                ),
                volume_mounts=mounts,
                security_context=container_security(),
                **termination,
            )
        ],
        volumes=volumes,
        security_context=pod_security(),
        **(pod_fields or {}),
    )
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(
            name=name, namespace=c.k8s_namespace, labels=dict(labels), annotations=annotations
        ),
        spec=k8s.V1JobSpec(
            ttl_seconds_after_finished=c.k8s_ttl_s,
            active_deadline_seconds=c.k8s_deadline_s or None,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=dict(labels), annotations=annotations),
                spec=pod,
            ),
            **(job_fields or {}),
        ),
    )
