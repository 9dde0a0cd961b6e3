"""What every Job graspfleet creates shares: the API client, request deadline and pod hardening.

The trainer (training and evaluation Jobs) and the sim-farm (collection Jobs)
both create Jobs through the official client; their pods run the same image
under the same restrictions as the Deployments in k8s/base.
"""

from __future__ import annotations

from kubernetes import client as k8s
from kubernetes import config as k8s_config

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
