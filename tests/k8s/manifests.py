"""Reading built manifests: workloads, pod specs, containers, label selectors, NetworkPolicy rules."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
IMAGE = "graspfleet"


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def containers(workload: dict, init: bool = True) -> list[dict]:
    spec = pod_spec(workload)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def is_graspfleet(container: dict) -> bool:
    """Runs the project's image (not TF Serving or PostgreSQL)."""
    repository = container["image"].rsplit(":", 1)[0]
    return repository.rsplit("/", 1)[-1] == IMAGE


def env(container: dict) -> dict[str, str]:
    """Plain env values; values from fields or Secrets read as '<from>'."""
    return {e["name"]: e.get("value", "<from>") for e in container.get("env", [])}


def graspfleet_command(container: dict) -> list[str]:
    """The `graspfleet ...` words a container runs, also through `sh -c`."""
    command = [*container.get("command", []), *container.get("args", [])]
    if command[:2] == ["/bin/sh", "-c"]:
        command = shlex.split(command[2].removeprefix("exec "))
    return command if command[:1] == ["graspfleet"] else []


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) matches `labels`."""
    selector = selector or {}
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_ports(workload: dict) -> dict[str, int]:
    return {
        p["name"]: p["containerPort"]
        for c in containers(workload, init=False)
        for p in c.get("ports", [])
        if "name" in p
    }


def _port_matches(rule_ports: list[dict] | None, port: int, named_ports: dict[str, int]) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        value = p.get("port")
        if value is None or value == port or named_ports.get(value) == port:
            return True
    return False


def _peer_matches(peers: list[dict] | None, labels: dict) -> bool:
    """A same-namespace pod with `labels` is one of `peers` (no peers: everyone)."""
    if not peers:
        return True
    return any(
        "podSelector" in peer
        and "namespaceSelector" not in peer
        and selects(peer["podSelector"], labels)
        for peer in peers
    )


def policies_for(policies: list[dict], labels: dict, direction: str) -> list[dict]:
    return [
        p
        for p in policies
        if direction in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], labels)
    ]


def ingress_allowed(policies: list[dict], server: dict, client_labels: dict, port: int) -> bool:
    """Whether some policy on `server` lets a pod with `client_labels` reach `port`."""
    named_ports = container_ports(server)
    for policy in policies_for(policies, pod_labels(server), "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            if _peer_matches(rule.get("from"), client_labels) and _port_matches(
                rule.get("ports"), port, named_ports
            ):
                return True
    return False


def egress_allowed(policies: list[dict], client: dict, server_labels: dict, port: int) -> bool:
    """Whether some policy on `client` lets it reach a pod with `server_labels` on `port`."""
    for policy in policies_for(policies, pod_labels(client), "Egress"):
        for rule in policy["spec"].get("egress", []):
            if _peer_matches(rule.get("to"), server_labels) and _port_matches(
                rule.get("ports"), port, {}
            ):
                return True
    return False


def addresses(container: dict) -> Iterator[tuple[str, str, int]]:
    """(setting, host, port) of every GRASPFLEET_*_ADDRESS setting."""
    for name, value in env(container).items():
        if name.startswith("GRASPFLEET_") and name.endswith("_ADDRESS") and ":" in value:
            host, _, port = value.rpartition(":")
            yield name, host, int(port)


def backing(service: dict, workloads: list[dict]) -> list[dict]:
    """The workloads whose pods a Service sends to."""
    selector = {"matchLabels": service["spec"]["selector"]}
    return [w for w in workloads if selects(selector, pod_labels(w))]
