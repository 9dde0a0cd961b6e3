"""Reading built manifests: workloads, pod specs, containers, label selectors, NetworkPolicy rules."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

from kubernetes import client as k8s

from graspfleet.v1 import trainer_pb2
from services.common.config import config_from
from services.common.upstream import TLS_CA_ENV
from services.sim_farm import kubernetes_job
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.plan import CollectionPlan
from services.trainer.config import TrainerConfig
from services.trainer.kubernetes_backend import KubernetesBackend
from services.trainer.supervisor import job_spec

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
# The project's images: every service, and its GPU variant (the gpu-training component's).
IMAGE = "graspfleet"
GPU_IMAGE = "graspfleet-gpu"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
_SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")


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


def repository(image: str) -> str:
    """An image reference's last path segment without tag or digest: "graspfleet"."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def is_graspfleet(container: dict) -> bool:
    """Runs the project's image or its GPU variant (not TF Serving or PostgreSQL)."""
    return repository(container["image"]) in (IMAGE, GPU_IMAGE)


def quantity_bytes(quantity: str) -> int:
    """A binary-suffixed Kubernetes quantity ("6Gi") in bytes."""
    match = _SIZE.match(str(quantity))
    assert match, f"unexpected quantity {quantity!r}"
    power = {None: 0, "Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}[match.group(2)]
    return int(match.group(1)) * 1024**power


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


def upstreams(container: dict) -> Iterator[tuple[str, str, int]]:
    """(setting, host, port) of every connection a container's settings make.

    The GRASPFLEET_*_ADDRESS variables, the --*-address flags of its command
    and the host and port of the store's PostgreSQL DSN.
    """
    for name, value in env(container).items():
        if name.startswith("GRASPFLEET_") and name.endswith("_ADDRESS") and ":" in value:
            host, _, port = value.rpartition(":")
            yield name, host, int(port)
    words = graspfleet_command(container)
    for i, word in enumerate(words):
        flag, _, value = word.partition("=")
        if flag.startswith("--") and flag.endswith("-address"):
            value = value or (words[i + 1] if i + 1 < len(words) else "")
            host, _, port = value.rpartition(":")
            yield flag, host, int(port)
    dsn = env(container).get("GRASPFLEET_POSTGRES_DSN")
    if dsn:
        pairs = dict(p.split("=", 1) for p in dsn.split())
        yield "GRASPFLEET_POSTGRES_DSN", pairs["host"], int(pairs.get("port", 5432))


def service_target(service: dict, port: int, server: dict) -> int:
    """The container port of `server` that a connection to `service`:`port` reaches."""
    (entry,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    target = entry.get("targetPort", port)
    return container_ports(server)[target] if isinstance(target, str) else target


def mounts_api_token(workload: dict) -> bool:
    """Whether some container of the pod gets a service account token (so calls the API)."""
    spec = pod_spec(workload)
    projected = {
        v["name"]
        for v in spec.get("volumes", [])
        if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))
    }
    mounted = {m["name"] for c in containers(workload) for m in c.get("volumeMounts", [])}
    return spec.get("automountServiceAccountToken", True) or bool(projected & mounted)


@dataclass(frozen=True)
class Pod:
    """A pod as NetworkPolicies see it: labels, namespace (and its labels), named ports."""

    name: str
    labels: dict = field(hash=False)
    namespace: str = "graspfleet"
    ports: dict = field(default_factory=dict, hash=False)

    @property
    def namespace_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace}


def workload_pod(workload: dict) -> Pod:
    return Pod(
        workload["metadata"]["name"],
        pod_labels(workload),
        workload["metadata"].get("namespace", "graspfleet"),
        container_ports(workload),
    )


# A destination outside the cluster (the API server's address, the internet).
EXTERNAL = Pod("<external address>", {}, "<none>")


def _peer_selects(peer: dict, policy_namespace: str, other: Pod) -> bool:
    if "ipBlock" in peer:
        # Whether an address block holds pod addresses depends on the CNI: count
        # it as matching every pod, so an allowed edge is never missed.
        return True
    if other is EXTERNAL:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), other.labels)


def _rule_ports_match(rule_ports: list[dict] | None, port: int, protocol: str, named: dict) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        value = p.get("port")
        if value is None or value == port or named.get(value) == port:
            return True
    return False


def _side_allows(
    policies: list[dict],
    subject: Pod,
    other: Pod,
    server: Pod,
    port: int,
    protocol: str,
    direction: str,
) -> bool:
    """Whether the policies on `subject` let it talk to `other` in `direction`."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", "graspfleet") == subject.namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], subject.labels)
    ]
    if not selecting:
        return True  # not isolated in this direction
    for policy in selecting:
        namespace = policy["metadata"].get("namespace", "graspfleet")
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (not peers or any(_peer_selects(p, namespace, other) for p in peers)) and (
                _rule_ports_match(rule.get("ports"), port, protocol, server.ports)
            ):
                return True
    return False


def connection_allowed(
    policies: list[dict], client: Pod, server: Pod, port: int, protocol: str = "TCP"
) -> bool:
    """Whether `client` may open a connection to `server`'s `port`: egress and ingress both allow it.

    An EXTERNAL server has no ingress policies; an EXTERNAL client no egress ones.
    """
    egress = client is EXTERNAL or _side_allows(
        policies, client, server, server, port, protocol, "Egress"
    )
    ingress = server is EXTERNAL or _side_allows(
        policies, server, client, server, port, protocol, "Ingress"
    )
    return egress and ingress


def backing(service: dict, workloads: list[dict]) -> list[dict]:
    """The workloads whose pods a Service sends to."""
    selector = {"matchLabels": service["spec"]["selector"]}
    return [w for w in workloads if selects(selector, pod_labels(w))]


def trainer_config(objects: list[dict]) -> TrainerConfig:
    """The trainer's settings as its Deployment gives them (Secrets and fields filled in)."""
    (container,) = pod_spec(named(objects, "Deployment", "trainer"))["containers"]
    values = env(container)
    values.update(GRASPFLEET_AUTH_TOKEN="secret", GRASPFLEET_K8S_NAMESPACE="graspfleet")
    return config_from(TrainerConfig, {}, values)


def training_job(objects: list[dict]) -> dict:
    """The Job the trainer creates for a training run, with its settings in these manifests."""
    return _run_job(objects, trainer_pb2.RECIPE_DANN)


def evaluation_job(objects: list[dict]) -> dict:
    """The Job the trainer creates for an evaluation run (it calls the sim-farm and the store)."""
    return _run_job(objects, trainer_pb2.RECIPE_EVALUATION)


def _run_job(objects: list[dict], recipe: int) -> dict:
    config = trainer_config(objects)
    run = trainer_pb2.Run(run_id="run-1", spec=trainer_pb2.RunSpec(recipe=recipe))
    return KubernetesBackend(config, k8s.ApiClient()).manifest_dict(job_spec(config, run))


def sim_farm_config(objects: list[dict]) -> SimFarmConfig:
    """The sim-farm's settings as its Deployment gives them (fields filled in)."""
    (container,) = pod_spec(named(objects, "Deployment", "sim-farm"))["containers"]
    values = env(container)
    values.update(GRASPFLEET_K8S_NAMESPACE="graspfleet")
    return config_from(SimFarmConfig, {}, values)


def shard_job(objects: list[dict]) -> dict:
    """The Indexed Job the sim-farm creates for a collection, with its settings in these manifests."""
    plan = CollectionPlan(
        collection_id="collection-1",
        num_episodes=100,
        num_shards=10,
        seed=1,
        max_steps=8,
        domain="sim",
        randomization="visual",
        object_set="train",
        objects_per_bin=5,
        policy="cem",
        epsilon=0.0,
        model_label="stable",
        model_version=0,
        width=64,
        height=64,
        render_masks=True,
        render_canonical=False,
    )
    (container,) = pod_spec(named(objects, "Deployment", "sim-farm"))["containers"]
    # Its pods dial TLS when the farm does (the tls component gives it a CA).
    tls = TLS_CA_ENV in env(container)
    job = kubernetes_job.manifest(sim_farm_config(objects), plan, tls)
    return k8s.ApiClient().sanitize_for_serialization(job)
