"""Workload identity: every graspfleet container serves TLS, requires client certificates and
presents its own, from a Secret of its own whose Common Name is its identity; the Job creators
hand their own Secret to their Jobs; cert-manager and k8s/bootstrap-tls.sh make exactly those
Secrets. TensorFlow Serving and PostgreSQL are left alone; without the tls component, nothing
speaks it."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess

import pytest
import yaml

from services import cli
from services.common import upstream
from services.common.config import env_name
from tests.k8s import kustomize
from tests.k8s import manifests as m

COMPONENT = "tls"
SECRET_PREFIX = "graspfleet-tls-"
TLS_DIR = "/etc/graspfleet/tls"
HEALTH_PORT = 9465
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# What every graspfleet container gets: the server's certificate folder and client
# authentication, the clients' CA and certificate, and the plaintext health port for kubelet's
# probes (they cannot speak TLS). One certificate serves as server and client certificate.
TLS_ENV = {
    env_name("tls_dir"): TLS_DIR,
    env_name("tls_client_auth"): "true",
    upstream.TLS_CA_ENV: f"{TLS_DIR}/ca.crt",
    "GRASPFLEET_TLS_CLIENT_DIR": TLS_DIR,
    env_name("health_port"): str(HEALTH_PORT),
}
# The creators of Jobs, whose Jobs run with their identity.
JOB_CREATORS = ("trainer", "sim-farm")
CERTIFICATE_FIELDS = {
    "secretName",
    "commonName",
    "dnsNames",
    "ipAddresses",
    "duration",
    "renewBefore",
    "usages",
    "privateKey",
    "issuerRef",
    "isCA",
}


def identity(workload: dict) -> str:
    """The Common Name of a workload's certificate: an arm's agent robot-agent/<arm>, else
    the workload's name."""
    arm = m.pod_labels(workload).get("graspfleet.io/robot-id")
    return f"robot-agent/{arm}" if arm else workload["metadata"]["name"]


def tls_volume(workload: dict) -> dict:
    """The pod's volume `tls`: the workload's own certificate Secret."""
    (volume,) = [v for v in m.pod_spec(workload).get("volumes", []) if v["name"] == "tls"]
    return volume


def tls_mounts(workload: dict, container: dict) -> list[dict]:
    """The container's mounts of a volume that holds a graspfleet-tls-* Secret."""
    secret = {
        v["name"]
        for v in m.pod_spec(workload).get("volumes", [])
        if v.get("secret", {}).get("secretName", "").startswith(SECRET_PREFIX)
    }
    return [v for v in container.get("volumeMounts", []) if v["name"] in secret]


def probe_port(probe: dict) -> int | None:
    """The port a grpc or tcpSocket probe asks; None for other kinds (exec)."""
    for kind in ("grpc", "tcpSocket"):
        if kind in probe:
            return probe[kind]["port"]
    return None


def check_container(at: str, workload: dict, container: dict) -> None:
    """A graspfleet container speaks TLS with its workload's own, required certificate."""
    assert {k: m.env(container).get(k) for k in TLS_ENV} == TLS_ENV, at
    volume = tls_volume(workload)
    assert volume["secret"] == {
        "secretName": SECRET_PREFIX + workload["metadata"]["name"],
        "optional": False,
    }, at
    # The whole Secret as a folder: a subPath mount would never see a renewed certificate.
    assert tls_mounts(workload, container) == [
        {"name": volume["name"], "mountPath": TLS_DIR, "readOnly": True}
    ], at
    probe_ports = {probe: probe_port(container.get(probe, {})) for probe in PROBES}
    assert probe_ports == dict.fromkeys(PROBES, HEALTH_PORT), at
    # A port of its own, next to the TLS gRPC port and the metrics port.
    assert HEALTH_PORT not in m.container_ports(workload).values(), at


def check_tls(name: str, objects: list[dict]) -> set[str]:
    """Asserts that every graspfleet container has TLS and no other has; returns those checked."""
    checked = set()
    for workload in m.workloads(objects):
        for container in m.containers(workload, init=False):
            at = f"{name}: {kustomize.describe(workload)} container {container['name']}"
            if m.is_graspfleet(container):
                check_container(at, workload, container)
                checked.add(m.graspfleet_command(container)[1])
                continue
            # TF Serving takes no tls_dir; PostgreSQL is not a gRPC service.
            assert not set(TLS_ENV) & set(m.env(container)), at
            assert not tls_mounts(workload, container), at
            assert HEALTH_PORT not in [probe_port(container.get(p, {})) for p in PROBES], at
    return checked


def created_jobs(objects: list[dict]) -> dict[str, dict]:
    """The Jobs the trainer and the sim-farm create, by their creator."""
    return {
        "trainer": m.training_job(objects),
        "trainer evaluation": m.evaluation_job(objects),
        "sim-farm": m.shard_job(objects),
    }


def test_with_tls_every_graspfleet_container_serves_and_dials_tls(built):
    with_tls = [c for c in built if c.includes(COMPONENT)]
    assert {"root", "dev", "fleet"} <= {c.name for c in with_tls}
    assert "dev-insecure" not in {c.name for c in with_tls}
    for combination in with_tls:
        objects = built[combination]
        expected = set(cli.SERVICES)
        if combination.includes("tensorflow-serving"):
            expected.remove("predictor")
        assert check_tls(combination.name, objects) == expected, combination.name
        # TF Serving serves plaintext: its one client dials it so, TLS everywhere else.
        planner = m.named(objects, "Deployment", "servo-planner")
        (planner_container,) = m.pod_spec(planner)["containers"]
        plaintext = m.env(planner_container).get(env_name("predictor_plaintext"))
        tf_serving = combination.includes("tensorflow-serving")
        assert plaintext == ("true" if tf_serving else None), combination.name
        # The Secrets come from cert-manager or the bootstrap script, never from here.
        secrets = [o["metadata"]["name"] for o in m.of_kind(objects, "Secret")]
        assert not [s for s in secrets if s.startswith(SECRET_PREFIX)], combination.name


def test_job_creators_hand_their_own_identity_to_their_jobs(built):
    """The trainer's Jobs (an evaluation calls the farm and the store) and the farm's shard
    Jobs mount their creator's Secret, and only it, and dial TLS with it."""
    for combination in [c for c in built if c.includes(COMPONENT)]:
        objects = built[combination]
        for creator in JOB_CREATORS:
            (container,) = m.pod_spec(m.named(objects, "Deployment", creator))["containers"]
            secret = m.env(container).get(env_name("k8s_tls_secret"))
            assert secret == SECRET_PREFIX + creator, combination.name
        for creator, job in created_jobs(objects).items():
            at = f"{combination.name}: {creator}'s Job"
            pod = job["spec"]["template"]["spec"]
            secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
            assert secrets == {SECRET_PREFIX + creator.split()[0]}, at
            (container,) = pod["containers"]
            assert m.env(container)[upstream.TLS_CA_ENV] == f"{TLS_DIR}/ca.crt", at


def test_job_creators_jobs_present_their_creators_certificate(built):
    objects = built[kustomize.Combination("root")]
    for creator, job in created_jobs(objects).items():
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert m.env(container).get("GRASPFLEET_TLS_CLIENT_DIR") == TLS_DIR, creator


def test_tls_leaves_tensorflow_serving_alone_in_either_order():
    """The combinations list tensorflow-serving before tls; an overlay may list them the other way."""
    combination = kustomize.Combination("dev-insecure", (COMPONENT, "tensorflow-serving"))
    objects = kustomize.build_combination(combination)
    assert "predictor" not in check_tls(combination.name, objects)
    predictor = m.named(objects, "Deployment", "grasp-predictor")
    (container,) = m.pod_spec(predictor)["containers"]
    assert container["image"].startswith("tensorflow/serving:")
    for probe in PROBES:
        assert container[probe].get("tcpSocket") == {"port": 8500}, probe


def test_without_tls_nothing_speaks_it(built):
    """Each workload declares its Secret (base/), optional and mounted by nobody."""
    without = [c for c in built if not c.includes(COMPONENT)]
    assert without
    for combination in without:
        for workload in m.workloads(built[combination]):
            if any(m.is_graspfleet(c) for c in m.containers(workload)):
                assert tls_volume(workload)["secret"]["optional"] is True
            for container in m.containers(workload):
                at = f"{combination.name}: {kustomize.describe(workload)}"
                assert not set(TLS_ENV) & set(m.env(container)), at
                assert not tls_mounts(workload, container), at
                for probe in PROBES:
                    assert probe_port(container.get(probe, {})) != HEALTH_PORT, at


def expected_certificates(objects: list[dict]) -> dict[str, tuple[str, set[str]]]:
    """Secret -> (Common Name, DNS names) of the certificate of every workload that declares
    one (a volume `tls` of a graspfleet-tls-* Secret; TF Serving's predictor keeps its unused
    one): the Services that send to it with a gRPC port and, for a StatefulSet's pod, its own
    name."""
    services = [
        s
        for s in m.of_kind(objects, "Service")
        if any(p["name"] == "grpc" for p in s["spec"]["ports"])
    ]
    expected = {}
    for workload in m.workloads(objects):
        volumes = [v for v in m.pod_spec(workload).get("volumes", []) if v["name"] == "tls"]
        if not volumes or not volumes[0]["secret"]["secretName"].startswith(SECRET_PREFIX):
            continue
        labels = m.pod_labels(workload)
        names = {
            s["metadata"]["name"]
            for s in services
            if m.selects({"matchLabels": s["spec"]["selector"]}, labels)
        }
        if workload["kind"] == "StatefulSet":
            names.add(f"{workload['metadata']['name']}-0.{workload['spec']['serviceName']}")
        secret = tls_volume(workload)["secret"]["secretName"]
        expected[secret] = (identity(workload), names | {"localhost"})
    return expected


def check_issuer(objects: list[dict], issuer_ref: dict) -> None:
    """The issuer is a CA Issuer whose CA is a self-signed CA Certificate of the fleet's."""
    assert issuer_ref["kind"] == "Issuer" and issuer_ref["group"] == "cert-manager.io"
    ca = m.named(objects, "Issuer", issuer_ref["name"])["spec"]["ca"]["secretName"]
    (root,) = [c for c in m.of_kind(objects, "Certificate") if c["spec"]["secretName"] == ca]
    assert root["spec"]["isCA"] is True
    # Renewing the CA keeps its key: certificates signed before and after verify either way.
    assert root["spec"]["privateKey"]["rotationPolicy"] == "Never"
    assert "selfSigned" in m.named(objects, "Issuer", root["spec"]["issuerRef"]["name"])["spec"]


def test_cert_manager_issues_every_workloads_certificate(built):
    """One Certificate per Secret a workload mounts: its identity as Common Name, the names
    clients dial, server and client auth, renewed well before it ends."""
    with_cert_manager = [c for c in built if c.includes("cert-manager")]
    assert "fleet" in {c.name for c in with_cert_manager}
    for combination in with_cert_manager:
        objects = built[combination]
        workloads = {
            c["spec"]["secretName"]: c["spec"]
            for c in m.of_kind(objects, "Certificate")
            if c["spec"]["secretName"].startswith(SECRET_PREFIX)
        }
        expected = expected_certificates(objects)
        assert set(workloads) == set(expected), combination.name
        for secret, spec in workloads.items():
            at = f"{combination.name}: {secret}"
            assert set(spec) <= CERTIFICATE_FIELDS, at
            assert (spec["commonName"], set(spec["dnsNames"])) == expected[secret], at
            assert spec["ipAddresses"] == ["127.0.0.1"], at
            assert {"server auth", "client auth"} <= set(spec["usages"]), at
            hours = {k: int(spec[k].removesuffix("h")) for k in ("duration", "renewBefore")}
            assert 0 < 3 * hours["renewBefore"] <= hours["duration"], at
            assert spec["privateKey"]["rotationPolicy"] == "Always", at
            check_issuer(objects, spec["issuerRef"])


def _openssl(*args: str) -> str:
    return subprocess.run(
        ["openssl", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def _bootstrap(tmp_path, ca_dir) -> dict[str, dict]:
    out = tmp_path / "secrets"
    subprocess.run(
        [kustomize.K8S / "bootstrap-tls.sh", "--ca-dir", ca_dir, "--out", out],
        env={**os.environ, "KUBECTL": kustomize.kubectl()},
        check=True,
        capture_output=True,
        timeout=300,
    )
    secrets = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    return {s["metadata"]["name"]: s for s in secrets}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_bootstrap_script_makes_the_secrets_cert_manager_would(tmp_path, built):
    """For clusters without cert-manager: the same Secrets, each certificate with the
    workload's identity and names, signed by a CA kept for the next run."""
    ca_dir = tmp_path / "ca"
    secrets = _bootstrap(tmp_path, ca_dir)
    expected = expected_certificates(built[kustomize.Combination("root")])
    assert set(secrets) == set(expected)
    assert kustomize.validate(secrets.values(), kustomize.supported_versions()) == []
    ca = (ca_dir / "ca.crt").read_bytes()
    for name, secret in secrets.items():
        assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {
            "tls.crt",
            "tls.key",
            "ca.crt",
        }
        assert secret["metadata"]["namespace"] == kustomize.NAMESPACE
        assert base64.b64decode(secret["data"]["ca.crt"]) == ca
        certificate = tmp_path / f"{name}.crt"
        certificate.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
        _openssl("verify", "-CAfile", str(ca_dir / "ca.crt"), str(certificate))
        text = _openssl(
            "x509",
            "-in",
            str(certificate),
            "-noout",
            "-nameopt",
            "RFC2253",
            "-subject",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        )
        common_name, dns_names = expected[name]
        assert f"subject=CN={common_name}\n" in text, name
        (alt_names,) = re.findall(r"Subject Alternative Name: *\n *(.+)", text)
        assert set(alt_names.split(", ")) == {
            *(f"DNS:{n}" for n in dns_names),
            "IP Address:127.0.0.1",
        }, text
        assert "TLS Web Server Authentication, TLS Web Client Authentication" in text, text
    # A second run (to renew, or for a new arm) keeps the CA: nothing needs a restart.
    again = _bootstrap(tmp_path, ca_dir)
    assert (ca_dir / "ca.crt").read_bytes() == ca
    assert again.keys() == secrets.keys()
    # A person's client certificate, from the same CA.
    person = tmp_path / "ana"
    subprocess.run(
        [kustomize.K8S / "bootstrap-tls.sh", "--ca-dir", ca_dir, "--user", "ana", "--out", person],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (person / "ca.crt").read_bytes() == ca
    _openssl("verify", "-CAfile", str(ca_dir / "ca.crt"), str(person / "tls.crt"))
    text = _openssl(
        "x509",
        "-in",
        str(person / "tls.crt"),
        "-noout",
        "-nameopt",
        "RFC2253",
        "-subject",
        "-ext",
        "extendedKeyUsage",
    )
    assert "subject=CN=user/ana\n" in text and "TLS Web Client Authentication\n" in text, text
    assert "Server Authentication" not in text
