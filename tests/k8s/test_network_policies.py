"""NetworkPolicies allow exactly the connections the services' settings make, and nothing else.

The edges are derived from the built manifests, never listed here: every
GRASPFLEET_*_ADDRESS variable, --*-address flag and the store's PostgreSQL DSN
names a Service; the Service names its pods. To those the policies add only
Prometheus scraping `metrics` ports, an operator's toolbox pod calling gRPC
APIs, DNS, and the Kubernetes API for the pods that hold an API token. Every
pod the fleet runs (the workloads, a training and an evaluation Job as the
trainer creates them, a collection's shard Job as the sim-farm creates it, the
toolbox, Prometheus) is checked against every port of every workload.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from tests.k8s import manifests as m

OPERATOR_LABEL = "graspfleet.io/client"
OPERATOR_ACCOUNT = "graspfleet-operator"
OPERATOR = m.Pod("operator toolbox", {OPERATOR_LABEL: "true"})
PROMETHEUS = m.Pod("prometheus", {"app.kubernetes.io/name": "prometheus"}, namespace="monitoring")
KUBE_DNS = m.Pod("kube-dns", {"k8s-app": "kube-dns"}, namespace="kube-system")
STRANGER = m.Pod("a pod of no role", {"app.kubernetes.io/name": "x"})
OTHER_SYSTEM_POD = m.Pod("metrics-server", {"k8s-app": "metrics-server"}, namespace="kube-system")
AGENT_UPSTREAMS = {("episode-store", 50051), ("servo-planner", 50053), ("refiner", 50055)}


def with_policies(built: dict) -> list[tuple[str, list[dict]]]:
    found = [(c.name, o) for c, o in built.items() if m.of_kind(o, "NetworkPolicy")]
    assert {"root", "dev", "fleet", "dev-insecure+network-policies"} <= {n for n, _ in found}
    return found


def trainer_jobs(objects: list[dict]) -> dict[str, dict]:
    """The Jobs the trainer creates, by the name their pods have here."""
    return {"training job": m.training_job(objects), "evaluation job": m.evaluation_job(objects)}


def created_jobs(objects: list[dict]) -> dict[str, dict]:
    """The Jobs the services create (the trainer's, the sim-farm's), by their pods' name here."""
    return {**trainer_jobs(objects), "sim-farm shard": m.shard_job(objects)}


def job_pods(objects: list[dict]) -> list[tuple[m.Pod, dict]]:
    return [
        (m.Pod(name, job["spec"]["template"]["metadata"]["labels"]), job)
        for name, job in created_jobs(objects).items()
    ]


def derived_edges(objects: list[dict]) -> set[tuple[str, str, int]]:
    """(client pod, server pod, container port) of every connection the settings make:
    the workloads' and those of the Jobs the trainer and the sim-farm create (from their
    environment)."""
    services = {s["metadata"]["name"]: s for s in m.of_kind(objects, "Service")}
    workloads = m.workloads(objects)
    clients = [(w["metadata"]["name"], w) for w in workloads]
    clients += list(created_jobs(objects).items())
    edges = set()
    for name, client in clients:
        for container in m.containers(client):
            for _, host, port in m.upstreams(container):
                for server in m.backing(services[host], workloads):
                    target = m.service_target(services[host], port, server)
                    edges.add((name, server["metadata"]["name"], target))
    return edges


def expected_edges(objects: list[dict]) -> set[tuple[str, str, int]]:
    """The derived edges plus the operator's gRPC calls and Prometheus' scrapes."""
    edges = derived_edges(objects)
    for server in m.workloads(objects):
        ports = m.container_ports(server)
        if "grpc" in ports:
            edges.add((OPERATOR.name, server["metadata"]["name"], ports["grpc"]))
        if "metrics" in ports and m.pod_labels(server).get("app.kubernetes.io/part-of"):
            edges.add((PROMETHEUS.name, server["metadata"]["name"], ports["metrics"]))
    return edges


def test_the_edges_come_from_the_settings(built):
    """The derivation sees what the code calls: every arm calls the store, the planner and
    (RCAN) the refiner, the store its database; nobody calls the refiner for training;
    evaluation Jobs call the farm and the store, training Jobs nobody; the farm's shard
    pods call the store, the planner and the refiner."""
    objects = built[next(c for c in built if c.name == "fleet")]
    arms = {
        s["metadata"]["name"]
        for s in m.of_kind(objects, "StatefulSet")
        if s["metadata"]["name"].startswith("robot-agent-")
    }
    assert arms == {f"robot-agent-{p.stem}" for p in Path("robots/fleet").glob("*.yaml")}
    by_arm = {(arm, server, port) for arm in arms for server, port in AGENT_UPSTREAMS}
    assert derived_edges(objects) == by_arm | {
        ("sim-farm", "episode-store", 50051),
        ("sim-farm", "servo-planner", 50053),
        ("sim-farm", "refiner", 50055),
        ("servo-planner", "grasp-predictor", 8500),
        ("trainer", "episode-store", 50051),
        ("trainer", "sim-farm", 50052),
        ("evaluation job", "sim-farm", 50052),
        ("evaluation job", "episode-store", 50051),
        ("sim-farm shard", "episode-store", 50051),
        ("sim-farm shard", "servo-planner", 50053),
        ("sim-farm shard", "refiner", 50055),
        ("episode-store", "postgres", 5432),
    }


def test_network_policies_allow_exactly_the_data_flow(built):
    for name, objects in with_policies(built):
        policies = m.of_kind(objects, "NetworkPolicy")
        deny = m.named(objects, "NetworkPolicy", "default-deny")["spec"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        servers = [m.workload_pod(w) for w in m.workloads(objects)]
        jobs = [pod for pod, _ in job_pods(objects)]
        clients = [*servers, *jobs, OPERATOR, PROMETHEUS, STRANGER]
        expected = expected_edges(objects)
        for client in clients:
            for server in servers:
                for port in sorted(set(server.ports.values())):
                    allowed = m.connection_allowed(policies, client, server, port)
                    edge = (client.name, server.name, port)
                    assert allowed == (edge in expected), (
                        f"{name}: {client.name} -> {server.name}:{port} is "
                        f"{'allowed' if allowed else 'refused'}"
                    )


def test_every_pod_resolves_names_and_only_api_clients_leave_the_cluster(built):
    for name, objects in with_policies(built):
        policies = m.of_kind(objects, "NetworkPolicy")
        workloads = m.workloads(objects)
        pods = [(m.workload_pod(w), m.mounts_api_token(w)) for w in workloads]
        pods += [
            (pod, job["spec"]["template"]["spec"]["automountServiceAccountToken"])
            for pod, job in job_pods(objects)
        ]
        callers = {p.name for p, token in pods if token}
        assert {"trainer", "sim-farm", "robot-agent-kuka-01"} <= callers, name
        assert "sim-farm shard" not in callers, name
        for pod, token in pods:
            for protocol in ("UDP", "TCP"):
                assert m.connection_allowed(policies, pod, KUBE_DNS, 53, protocol), pod.name
            assert not m.connection_allowed(policies, pod, OTHER_SYSTEM_POD, 53), pod.name
            for port in (443, 6443):
                assert m.connection_allowed(policies, pod, m.EXTERNAL, port) == token, (
                    f"{name}: {pod.name} to the Kubernetes API ({port})"
                )
            for port in (53, 80, 5432, 8080, 50051):
                assert not m.connection_allowed(policies, pod, m.EXTERNAL, port), (
                    f"{name}: {pod.name} leaves the cluster on {port}"
                )


def test_the_fleet_narrows_the_kubernetes_api_to_the_clusters_addresses(built):
    """The component cannot know the API server's address; the fleet overlay sets it."""
    objects = built[next(c for c in built if c.name == "fleet")]
    policy = m.named(objects, "NetworkPolicy", "allow-kubernetes-api")["spec"]
    (rule,) = policy["egress"]
    assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("TCP", 443), ("TCP", 6443)}
    destinations = rule.get("to", [])
    assert destinations, "any address may be reached on the API's ports"
    assert all(set(peer) == {"ipBlock"} for peer in destinations)
    for peer in destinations:
        network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        assert network.is_private and network.prefixlen >= 8, network


def trusted_selectors(policies: list[dict]) -> list[dict]:
    """The selectors of this namespace's pods that a policy grants something: every peer
    without a namespace selector, and the pods whose egress a policy opens (but for every pod's
    DNS)."""
    found = []
    for policy in policies:
        spec = policy["spec"]
        if spec.get("egress") and spec["podSelector"]:
            found.append(spec["podSelector"])
        for rule in [*spec.get("ingress", []), *spec.get("egress", [])]:
            for peer in [*rule.get("from", []), *rule.get("to", [])]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    found.append(peer["podSelector"])
    return found


def pinned(selector: dict, identities: dict) -> bool:
    """Whether only pods of a fixed service account can match `selector`: it requires a
    workload name (app.kubernetes.io/name) the admission policy ties to its account, or the
    operator's label."""
    labels = selector.get("matchLabels", {})
    if labels.get("app.kubernetes.io/name") in identities or labels.get(OPERATOR_LABEL) == "true":
        return True
    return any(
        e["key"] == "app.kubernetes.io/name"
        and e["operator"] == "In"
        and set(e["values"]) <= set(identities)
        for e in selector.get("matchExpressions", [])
    )


def check_pod_identity_policy(objects: list[dict]) -> dict:
    """The admission policy that ties labels to service accounts, bound to the namespace with
    its parameters; returns them (workload name -> service account)."""
    policy = m.named(objects, "ValidatingAdmissionPolicy", "graspfleet-pod-identity")["spec"]
    binding = m.named(objects, "ValidatingAdmissionPolicyBinding", "graspfleet-pod-identity")
    assert binding["spec"]["policyName"] == "graspfleet-pod-identity"
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "graspfleet"}
    }
    reference = binding["spec"]["paramRef"]
    assert reference["namespace"] == "graspfleet" and reference["parameterNotFoundAction"] == "Deny"
    assert policy["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
    assert policy["failurePolicy"] == "Fail"
    (rule,) = policy["matchConstraints"]["resourceRules"]
    assert (rule["resources"], set(rule["operations"])) == (["pods"], {"CREATE", "UPDATE"})
    expressions = " ".join(v["expression"] for v in policy["validations"])
    assert "params.data" in expressions and f"'{OPERATOR_ACCOUNT}'" in expressions
    assert OPERATOR_LABEL in expressions
    operator = m.named(objects, "ServiceAccount", OPERATOR_ACCOUNT)
    assert operator["automountServiceAccountToken"] is False
    return m.named(objects, "ConfigMap", reference["name"])["data"]


def test_what_the_policies_trust_no_pod_can_grant_itself(built):
    """Every label a NetworkPolicy trusts is tied by an admission policy to the service
    account of the workload that carries it (a pod chooses its labels, the Job creators
    cannot choose their pods' accounts), and the fleet's own pods satisfy it."""
    for name, objects in with_policies(built):
        identities = check_pod_identity_policy(objects)
        for selector in trusted_selectors(m.of_kind(objects, "NetworkPolicy")):
            assert pinned(selector, identities), f"{name}: {selector} is trusted but not pinned"
        accounts = {a["metadata"]["name"] for a in m.of_kind(objects, "ServiceAccount")}
        pods = [
            (w["metadata"]["name"], m.pod_labels(w), m.pod_spec(w)) for w in m.workloads(objects)
        ]
        pods += [
            (pod.name, pod.labels, job["spec"]["template"]["spec"])
            for pod, job in job_pods(objects)
        ]
        for pod, labels, spec in pods:
            account = spec.get("serviceAccountName", "default")
            assert account in accounts, f"{name}: {pod} runs as {account}, which is not created"
            workload = labels.get("app.kubernetes.io/name")
            assert workload in identities, f"{name}: {pod} ({workload}) has no pinned account"
            assert identities[workload] == account, f"{name}: {pod} runs as {account}"


def test_the_database_backups_reach_the_database_and_nothing_else(built):
    """The postgres component's backup and restore pods (its CronJobs) connect to the
    database; they reach no other workload, and no other pod may pose as them."""
    objects = built[next(c for c in built if c.name == "fleet")]
    policies = m.of_kind(objects, "NetworkPolicy")
    cronjobs = m.of_kind(objects, "CronJob")
    assert {c["metadata"]["name"] for c in cronjobs} >= {"postgres-backup", "postgres-restore"}
    servers = {w["metadata"]["name"]: m.workload_pod(w) for w in m.workloads(objects)}
    for cronjob in cronjobs:
        template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
        pod = m.Pod(cronjob["metadata"]["name"], template["metadata"]["labels"])
        for name, server in servers.items():
            for port in sorted(set(server.ports.values())):
                allowed = m.connection_allowed(policies, pod, server, port)
                assert allowed == ((name, port) == ("postgres", 5432)), (pod.name, name, port)
        identities = m.named(objects, "ConfigMap", "graspfleet-pod-identities")["data"]
        label = template["metadata"]["labels"]["app.kubernetes.io/name"]
        assert identities[label] == template["spec"]["serviceAccountName"]
    assert not m.connection_allowed(policies, STRANGER, servers["postgres"], 5432)
