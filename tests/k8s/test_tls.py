"""The tls component: every graspfleet container serves and dials TLS with the SRE's Secret and is
probed on a plaintext health port; TensorFlow Serving and PostgreSQL are left alone; without the
component, nothing of it."""

from __future__ import annotations

import re

import yaml

from services import cli
from services.common import upstream
from services.common.config import env_name
from tests.k8s import kustomize
from tests.k8s import manifests as m

COMPONENT = "tls"
README = kustomize.K8S / "components" / COMPONENT / "README.md"
SECRET = "graspfleet-tls"
TLS_DIR = "/etc/graspfleet/tls"
HEALTH_PORT = 9465
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# What every graspfleet container gets: the server's certificate folder, the clients' CA and
# the plaintext health port for kubelet's probes (they cannot speak TLS).
TLS_ENV = {
    env_name("tls_dir"): TLS_DIR,
    upstream.TLS_CA_ENV: f"{TLS_DIR}/ca.crt",
    env_name("health_port"): str(HEALTH_PORT),
}


def tls_mounts(workload: dict, container: dict) -> list[dict]:
    """The container's mounts of a volume that holds the Secret."""
    secret = {
        v["name"]
        for v in m.pod_spec(workload).get("volumes", [])
        if v.get("secret", {}).get("secretName") == SECRET
    }
    return [v for v in container.get("volumeMounts", []) if v["name"] in secret]


def probe_port(probe: dict) -> int | None:
    """The port a grpc or tcpSocket probe asks; None for other kinds (exec)."""
    for kind in ("grpc", "tcpSocket"):
        if kind in probe:
            return probe[kind]["port"]
    return None


def check_tls(name: str, objects: list[dict]) -> set[str]:
    """Asserts that every graspfleet container has TLS and no other has; returns those checked."""
    checked = set()
    for workload in m.workloads(objects):
        for container in m.containers(workload, init=False):
            at = f"{name}: {kustomize.describe(workload)} container {container['name']}"
            env = m.env(container)
            probe_ports = {probe: probe_port(container.get(probe, {})) for probe in PROBES}
            if not m.is_graspfleet(container):
                # TF Serving takes no tls_dir; PostgreSQL is not a gRPC service.
                assert not set(TLS_ENV) & set(env), at
                assert not tls_mounts(workload, container), at
                assert HEALTH_PORT not in probe_ports.values(), at
                continue
            assert {k: env.get(k) for k in TLS_ENV} == TLS_ENV, at
            mounts = tls_mounts(workload, container)
            assert len(mounts) == 1, f"{at}: mounts the Secret {len(mounts)} times"
            (mount,) = mounts
            # The whole Secret as a folder: a subPath mount would never see a renewed certificate.
            assert mount == {"name": mount["name"], "mountPath": TLS_DIR, "readOnly": True}, at
            assert probe_ports == dict.fromkeys(PROBES, HEALTH_PORT), at
            # A port of its own, next to the TLS gRPC port and the metrics port.
            assert HEALTH_PORT not in m.container_ports(workload).values(), at
            checked.add(m.graspfleet_command(container)[1])
    return checked


def test_with_tls_every_graspfleet_container_serves_and_dials_tls(built):
    with_tls = [c for c in built if COMPONENT in c.components]
    assert with_tls, "tls is not among the combinations tests/k8s/kustomize.py builds"
    for combination in with_tls:
        objects = built[combination]
        expected = set(cli.SERVICES)
        if "tensorflow-serving" in combination.components:
            expected.remove("predictor")
        assert check_tls(combination.name, objects) == expected, combination.name
        # The trainer's Jobs (evaluations call the farm and the store) get the Secret too.
        # TF Serving serves plaintext: its one client dials it so, TLS everywhere else.
        planner = m.named(objects, "Deployment", "servo-planner")
        (planner_container,) = m.pod_spec(planner)["containers"]
        plaintext = m.env(planner_container).get(env_name("predictor_plaintext"))
        assert plaintext == ("true" if "tensorflow-serving" in combination.components else None)
        trainer = m.named(objects, "Deployment", "trainer")
        (container,) = m.pod_spec(trainer)["containers"]
        assert m.env(container).get(env_name("k8s_tls_secret")) == SECRET, combination.name
        # The SRE creates the Secret (cert-manager or by hand), never the component.
        assert not [o for o in m.of_kind(objects, "Secret") if o["metadata"]["name"] == SECRET]


def test_tls_leaves_tensorflow_serving_alone_in_either_order():
    """The combinations list tensorflow-serving before tls; an overlay may list them the other way."""
    combination = kustomize.Combination("dev", (COMPONENT, "tensorflow-serving"))
    objects = kustomize.build_combination(combination)
    assert "predictor" not in check_tls(combination.name, objects)
    predictor = m.named(objects, "Deployment", "grasp-predictor")
    (container,) = m.pod_spec(predictor)["containers"]
    assert container["image"].startswith("tensorflow/serving:")
    for probe in PROBES:
        assert container[probe].get("tcpSocket") == {"port": 8500}, probe


def test_without_tls_nothing_speaks_it(built):
    for combination, objects in built.items():
        if COMPONENT in combination.components:
            continue
        for workload in m.workloads(objects):
            for volume in m.pod_spec(workload).get("volumes", []):
                assert volume.get("secret", {}).get("secretName") != SECRET, combination.name
            for container in m.containers(workload):
                at = f"{combination.name}: {kustomize.describe(workload)}"
                assert not set(TLS_ENV) & set(m.env(container)), at
                for probe in PROBES:
                    assert probe_port(container.get(probe, {})) != HEALTH_PORT, at


def test_the_certificate_names_every_service_clients_dial(built):
    """The README's certificate lists every Service with a gRPC port, each agent's pod name,
    and the loopback names the `graspfleet` commands run with `kubectl exec` dial."""
    text = README.read_text()
    (dns,) = re.findall(r"dnsNames: (\[.*\])", text)
    (ips,) = re.findall(r"ipAddresses: (\[.*\])", text)
    (san,) = re.findall(r'subjectAltName=([^"]+)"', text)
    services = {
        s["metadata"]["name"]
        for objects in built.values()
        for s in m.of_kind(objects, "Service")
        if any(p["name"] == "grpc" for p in s["spec"]["ports"])
    }
    names = {*services, "*.robot-agent", "localhost"}
    assert set(yaml.safe_load(dns)) == names
    assert yaml.safe_load(ips) == ["127.0.0.1"]
    assert set(san.split(",")) == {*(f"DNS:{n}" for n in names), "IP:127.0.0.1"}
