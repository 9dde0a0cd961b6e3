"""Every overlay × component combination of k8s/ builds, validates strictly, and is what an SRE expects.

The combinations, the builds and the strict schema validation are
tests/k8s/kustomize.py's (the same code `make k8s-validate` runs); the rest
checks properties of the built objects: hardened pods, probes, resources,
labels, settings the services really have, ports, storage, RBAC, and
NetworkPolicies that allow exactly the connections the settings make.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

from robots.inventory import load_inventory
from services import cli
from services.common.config import ConfigError, ServerConfig, config_from
from services.trainer.kubernetes_backend import NONROOT_UID
from tests.k8s import kustomize
from tests.k8s import manifests as m

COMBINATIONS = kustomize.combinations()
VERSIONS = kustomize.supported_versions()
_validated: set[str] = set()  # digests of objects already validated in this run
SHARED_CLAIMS = ("graspfleet-episodes", "graspfleet-models", "graspfleet-runs")
RECOMMENDED = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)


def every(built: dict) -> list[tuple[str, list[dict]]]:
    return [(c.name, objects) for c, objects in built.items()]


@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: c.name)
def test_every_combination_builds_and_validates_strictly(built, combination):
    objects = built[combination]
    assert m.of_kind(objects, "Deployment") and m.of_kind(objects, "DaemonSet")
    fresh = []
    for obj in objects:
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        if digest not in _validated:
            fresh.append(obj)
            _validated.add(digest)
    assert kustomize.validate(fresh, VERSIONS) == []


def test_k8s_root_is_the_dev_overlay(built):
    root = built[kustomize.Combination("root")]
    assert root == built[kustomize.Combination("dev")]
    assert len(VERSIONS) >= 5 and VERSIONS[0] == "1.29"


def test_strict_validation_refuses_unknown_fields_and_kinds(built):
    deployment = copy.deepcopy(m.of_kind(built[kustomize.Combination("dev")], "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["colour"] = "blue"
    errors = kustomize.validate([deployment], VERSIONS[:1])
    assert errors and "colour" in errors[0]
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    assert kustomize.validate([unknown], VERSIONS[:1])


def test_every_pod_is_hardened(built):
    for name, objects in every(built):
        for workload in m.workloads(objects):
            where = f"{name}: {kustomize.describe(workload)}"
            pod = m.pod_spec(workload)
            ctx = pod["securityContext"]
            assert ctx["runAsNonRoot"] is True, where
            assert ctx["seccompProfile"]["type"] == "RuntimeDefault", where
            assert not pod.get("hostNetwork") and not pod.get("hostPID"), where
            assert not any("hostPath" in v for v in pod.get("volumes", [])), where
            tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
            for container in m.containers(workload):
                at = f"{where} container {container['name']}"
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, at
                assert sc["readOnlyRootFilesystem"] is True, at
                assert sc["capabilities"]["drop"] == ["ALL"], at
                assert not sc.get("privileged") and "add" not in sc["capabilities"], at
                for section in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][section]), at
                mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
                assert mounts.get("/tmp") in tmp_volumes, f"{at}: no emptyDir at /tmp"


def test_graspfleet_pods_run_as_the_images_user(built):
    dockerfile = (kustomize.ROOT / "Dockerfile").read_text()
    (uid,) = re.findall(r"^ARG UID=(\d+)$", dockerfile, re.M)
    assert "USER ${UID}:${UID}" in dockerfile and int(uid) == NONROOT_UID
    for name, objects in every(built):
        for workload in m.workloads(objects):
            if any(m.is_graspfleet(c) for c in m.containers(workload)):
                ctx = m.pod_spec(workload)["securityContext"]
                assert ctx["runAsUser"] == ctx["runAsGroup"] == NONROOT_UID, name


def test_servers_have_native_grpc_probes_on_their_grpc_port(built):
    for name, objects in every(built):
        for workload in m.workloads(objects):
            for container in m.containers(workload, init=False):
                at = f"{name}: {kustomize.describe(workload)}"
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert probe in container, f"{at}: no {probe}"
                if not m.is_graspfleet(container):
                    continue
                env = m.env(container)
                port = int(env["GRASPFLEET_PORT"])
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                assert ports["grpc"] == port, at
                assert ports["metrics"] == int(env["GRASPFLEET_METRICS_PORT"]), at
                assert env["GRASPFLEET_HOST"] == "0.0.0.0", at
                # Readiness is the service's own health status.
                assert container["readinessProbe"]["grpc"]["port"] == port, at
                # Services that are NOT_SERVING until a model loads must not be killed for it.
                liveness = container["livenessProbe"]
                if m.graspfleet_command(container)[1] in ("predictor", "refiner"):
                    assert liveness["tcpSocket"]["port"] == port, at
                else:
                    assert liveness["grpc"]["port"] == port, at


def _config_class(command: str) -> type[ServerConfig] | None:
    server_module = cli.SERVICES.get(command, (f"services.{command}.server",))[0]
    try:
        module = importlib.import_module(server_module.rsplit(".", 1)[0] + ".config")
    except ModuleNotFoundError:
        return None
    (cls,) = [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, ServerConfig) and c is not ServerConfig
    ]
    return cls


def test_every_setting_in_the_manifests_exists_and_is_accepted(built):
    """A misspelt GRASPFLEET_ variable would be ignored silently; the config would refuse a bad value."""
    checked = set()
    for name, objects in every(built):
        for workload in m.workloads(objects):
            for container in m.containers(workload, init=False):
                words = m.graspfleet_command(container)
                if not words:
                    continue
                assert words[2] == "serve", name
                cls = _config_class(words[1])
                if cls is None:
                    assert words[1] == "refiner", f"{name}: no config for {words}"
                    continue  # the refiner's service is not merged yet
                fields = {f.upper() for f in cls.__dataclass_fields__}
                env = {k: v for k, v in m.env(container).items() if k.startswith("GRASPFLEET_")}
                unknown = {k for k in env if k.removeprefix("GRASPFLEET_") not in fields}
                assert not unknown, f"{name}: {kustomize.describe(workload)} sets unknown {unknown}"
                if "GRASPFLEET_AUTH_TOKEN" in env:
                    env["GRASPFLEET_AUTH_TOKEN"] = "secret"
                if env.get("GRASPFLEET_K8S_NAMESPACE") == "<from>":
                    env["GRASPFLEET_K8S_NAMESPACE"] = "graspfleet"
                flags = {}
                if "--robot-id" in words:
                    flags.update(robot_id="kuka-01", model_label="stable")
                try:
                    config_from(cls, flags, env)
                except ConfigError as err:
                    pytest.fail(f"{name}: {kustomize.describe(workload)}: {err}")
                checked.add(words[1])
    assert checked >= {"store", "predictor", "planner", "sim-farm", "agent", "trainer"}


def test_recommended_labels_and_selectors(built):
    for name, objects in every(built):
        for obj in objects:
            labels = obj["metadata"].get("labels", {})
            missing = [k for k in RECOMMENDED if k not in labels]
            assert not missing, f"{name}: {kustomize.describe(obj)} lacks {missing}"
            assert labels["app.kubernetes.io/part-of"] == "graspfleet"
        for workload in m.workloads(objects):
            template = m.pod_labels(workload)
            assert m.selects(workload["spec"]["selector"], template), kustomize.describe(workload)
            for key in (*RECOMMENDED, "app.kubernetes.io/version", "app.kubernetes.io/component"):
                assert key in template, f"{name}: {kustomize.describe(workload)} pods lack {key}"


def test_services_reach_their_pods_on_named_ports(built):
    for name, objects in every(built):
        for service in m.of_kind(objects, "Service"):
            (target,) = [
                w
                for w in m.workloads(objects)
                if m.selects({"matchLabels": service["spec"]["selector"]}, m.pod_labels(w))
            ]
            ports = m.container_ports(target)
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in ports, f"{name}: {kustomize.describe(service)} {port}"
                if port["name"] == "grpc":
                    assert ports["grpc"] == port["port"], f"{name}: {kustomize.describe(service)}"


def test_addresses_name_services_and_their_ports(built):
    for name, objects in every(built):
        services = {s["metadata"]["name"]: s for s in m.of_kind(objects, "Service")}
        for workload in m.workloads(objects):
            for container in m.containers(workload):
                for setting, host, port in m.addresses(container):
                    assert host in services, f"{name}: {setting}={host}:{port}"
                    assert port in [p["port"] for p in services[host]["spec"]["ports"]]


def test_network_policies_allow_exactly_the_data_flow(built):
    """Default deny; every connection the settings make is allowed at both ends; every port is reachable."""
    combos = [c for c in built if "network-policies" in c.components or c.overlay == "fleet"]
    assert combos
    for combination in combos:
        objects = built[combination]
        policies = m.of_kind(objects, "NetworkPolicy")
        deny = m.named(objects, "NetworkPolicy", "default-deny")["spec"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        services = {s["metadata"]["name"]: s for s in m.of_kind(objects, "Service")}
        workloads = m.workloads(objects)

        edges = 0
        for client in workloads:
            for container in m.containers(client):
                for setting, host, port in m.addresses(container):
                    for server in m.backing(services[host], workloads):
                        at = f"{combination.name}: {setting} of {kustomize.describe(client)}"
                        assert m.ingress_allowed(policies, server, m.pod_labels(client), port), at
                        assert m.egress_allowed(policies, client, m.pod_labels(server), port), at
                        edges += 1
        assert edges >= 6
        # Every Service port is open to someone: its clients, operators, or Prometheus.
        client = {"graspfleet.io/client": "true"}
        for service in services.values():
            for server in m.backing(service, workloads):
                for port in service["spec"]["ports"]:
                    number = m.container_ports(server).get(port["targetPort"], port["port"])
                    assert any(
                        m.ingress_allowed(policies, server, labels, number)
                        for labels in (client, {"app.kubernetes.io/name": "episode-store"})
                    ) or _scrapable(policies, server, port), f"{kustomize.describe(service)} {port}"
        # Nothing else reaches the store: a pod with no role is refused.
        store = m.backing(services["episode-store"], workloads)[0]
        assert not m.ingress_allowed(policies, store, {"app.kubernetes.io/name": "x"}, 50051)


def _scrapable(policies: list[dict], server: dict, port: dict) -> bool:
    if port["name"] != "metrics":
        return False
    for policy in m.policies_for(policies, m.pod_labels(server), "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            sources = rule.get("from", [])
            monitoring = any(
                s.get("namespaceSelector", {})
                .get("matchLabels", {})
                .get("kubernetes.io/metadata.name")
                == "monitoring"
                for s in sources
            )
            if monitoring and {"port": "metrics", "protocol": "TCP"} in rule.get("ports", []):
                return True
    return False


def test_robot_agents_run_on_robot_controllers_and_find_their_arm(built):
    for name, objects in every(built):
        agent = m.named(objects, "DaemonSet", "robot-agent")
        pod = m.pod_spec(agent)
        assert pod["nodeSelector"] == {"graspfleet.io/robot-controller": "true"}, name
        assert pod["automountServiceAccountToken"] is False
        (init,) = pod["initContainers"]
        assert init["command"][-1].endswith("node_robot_id.py")
        node = [e for e in init["env"] if e["name"] == "NODE_NAME"][0]
        assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        (main,) = pod["containers"]
        for handover in ("ROBOT_ID_FILE", "MODEL_LABEL_FILE"):
            assert m.env(init)[handover] == m.env(main)[handover]
        assert "--model-label" in m.graspfleet_command(main)
        assert m.graspfleet_command(main)[:3] == ["graspfleet", "agent", "serve"]
        # Only the init step mounts the API token.
        token = "/var/run/secrets/kubernetes.io/serviceaccount"
        assert token in {v["mountPath"] for v in init["volumeMounts"]}
        assert token not in {v["mountPath"] for v in main["volumeMounts"]}
        inventory = [v for v in pod["volumes"] if v["name"] == "inventory"][0]
        cm = m.named(objects, "ConfigMap", inventory["configMap"]["name"])
        assert sorted(cm["data"]) == sorted(
            p.name for p in (kustomize.ROOT / "robots/fleet").glob("*.yaml")
        )
        role = m.named(objects, "ClusterRole", "graspfleet-robot-agent")
        assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]


def test_the_inventory_configmap_is_robots_fleet(tmp_path):
    """k8s/base/robots/ is a copy of robots/fleet/ (kustomize cannot read outside k8s/)."""
    source = {p.name: p.read_bytes() for p in (kustomize.ROOT / "robots/fleet").glob("*.yaml")}
    copy_ = {p.name: p.read_bytes() for p in (kustomize.K8S / "base/robots").glob("*.yaml")}
    assert copy_ == source, "copy robots/fleet/*.yaml to k8s/base/robots/ (docs/operations.md)"
    base = yaml.safe_load((kustomize.K8S / "base/kustomization.yaml").read_text())
    (generator,) = [g for g in base["configMapGenerator"] if g["name"] == "robot-inventory"]
    assert sorted(generator["files"]) == sorted(f"robots/{n}" for n in source)
    assert len(load_inventory(kustomize.K8S / "base/robots")) == len(source)
    kind = yaml.safe_load((kustomize.K8S / "overlays/dev/kind.yaml").read_text())
    ids = {a.id for a in load_inventory(kustomize.K8S / "base/robots")}
    labelled = [n["labels"]["graspfleet.io/robot-id"] for n in kind["nodes"] if "labels" in n]
    assert labelled and set(labelled) <= ids


def test_storage(built):
    for name, objects in every(built):
        claims = {c["metadata"]["name"]: c for c in m.of_kind(objects, "PersistentVolumeClaim")}
        assert set(claims) >= {*SHARED_CLAIMS, "graspfleet-trainer-state"}, name
        modes = {c: claims[c]["spec"]["accessModes"] for c in SHARED_CLAIMS}
        expected = (
            ["ReadWriteOnce"] if name.startswith("dev") or name == "root" else ["ReadWriteMany"]
        )
        assert all(mode == expected for mode in modes.values()), (name, modes)
        assert claims["graspfleet-trainer-state"]["spec"]["accessModes"] == ["ReadWriteOnce"]
        for workload in m.workloads(objects):
            for volume in m.pod_spec(workload).get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, name
        # The store writes shards where the trainer tells its Jobs to read them.
        store = m.env(
            m.named(objects, "Deployment", "episode-store")["spec"]["template"]["spec"][
                "containers"
            ][0]
        )
        trainer_container = m.pod_spec(m.named(objects, "Deployment", "trainer"))["containers"][0]
        trainer = m.env(trainer_container)
        assert trainer["GRASPFLEET_STORE_DATA_DIR"] == store["GRASPFLEET_DATA_DIR"]
        mounts = {v["mountPath"]: v["name"] for v in trainer_container["volumeMounts"]}
        volumes = {
            v["name"]: v for v in m.pod_spec(m.named(objects, "Deployment", "trainer"))["volumes"]
        }
        for pair in trainer["GRASPFLEET_K8S_VOLUMES"].split(","):
            claim, path = pair.split("=")
            assert claim in claims
            # Jobs see each volume at the trainer's own path.
            assert volumes[mounts[path]]["persistentVolumeClaim"]["claimName"] == claim
        for path in ("GRASPFLEET_RUNS_DIR", "GRASPFLEET_MODEL_BASE", "GRASPFLEET_STORE_DATA_DIR"):
            assert trainer[path] in mounts


def test_trainer_may_run_its_jobs_and_nothing_more(built):
    for name, objects in every(built):
        trainer = m.named(objects, "Deployment", "trainer")
        container = m.pod_spec(trainer)["containers"][0]
        env = m.env(container)
        assert env["GRASPFLEET_K8S_IMAGE"] == container["image"], name
        assert env["GRASPFLEET_DEFAULT_BACKEND"] == "kubernetes"
        account = m.pod_spec(trainer)["serviceAccountName"]
        binding = m.named(objects, "RoleBinding", "graspfleet-trainer")
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "graspfleet"}
        ]
        role = m.named(objects, "Role", binding["roleRef"]["name"])
        grants = {
            (g, r): set(rule["verbs"])
            for rule in role["rules"]
            for g in rule["apiGroups"]
            for r in rule["resources"]
        }
        assert grants[("batch", "jobs")] == {"create", "get", "list", "watch", "delete"}
        assert grants[("", "pods/log")] == {"get"}
        assert "*" not in str(role["rules"])
        job_account = m.named(objects, "ServiceAccount", env["GRASPFLEET_K8S_SERVICE_ACCOUNT"])
        assert job_account["automountServiceAccountToken"] is False
        gpu = "gpu-training" in name.split("+")
        assert (env.get("GRASPFLEET_K8S_GPUS") == "1") == gpu, name


def test_autoscalers_and_disruption_budgets(built):
    for name, objects in every(built):
        hpas = {
            h["spec"]["scaleTargetRef"]["name"]: h
            for h in m.of_kind(objects, "HorizontalPodAutoscaler")
        }
        assert set(hpas) == {"grasp-predictor", "servo-planner"}, name
        for target, hpa in hpas.items():
            deployment = m.named(objects, "Deployment", target)
            assert "replicas" not in deployment["spec"], f"{name}: {target} fights its HPA"
            assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
            assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        pdbs = m.of_kind(objects, "PodDisruptionBudget")
        for workload in m.workloads(objects):
            if workload["kind"] in ("Deployment", "StatefulSet"):
                covering = [
                    p for p in pdbs if m.selects(p["spec"]["selector"], m.pod_labels(workload))
                ]
                assert len(covering) == 1, (
                    f"{name}: {kustomize.describe(workload)} has {len(covering)} PDBs"
                )


def test_monitors_find_every_metrics_port(built):
    for _, objects in every(built):
        if not m.of_kind(objects, "ServiceMonitor"):
            continue
        monitor = m.named(objects, "ServiceMonitor", "graspfleet")["spec"]
        assert monitor["jobLabel"] == "app.kubernetes.io/name"
        scraped = {
            s["metadata"]["name"]
            for s in m.of_kind(objects, "Service")
            if m.selects(monitor["selector"], s["metadata"]["labels"])
            and any(p["name"] == monitor["endpoints"][0]["port"] for p in s["spec"]["ports"])
        }
        assert scraped >= {
            "episode-store",
            "grasp-predictor",
            "servo-planner",
            "sim-farm",
            "trainer",
            "refiner",
        }
        pods = m.named(objects, "PodMonitor", "robot-agent")["spec"]
        agent = m.named(objects, "DaemonSet", "robot-agent")
        assert m.selects(pods["selector"], m.pod_labels(agent))
        assert pods["podMetricsEndpoints"][0]["port"] in m.container_ports(agent)
        dashboard = m.named(objects, "ConfigMap", "graspfleet-dashboard")
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(dashboard["data"]["graspfleet.json"])["uid"] == "graspfleet"


def test_tensorflow_serving_serves_the_model_repository(built):
    for combination, objects in built.items():
        if "tensorflow-serving" not in combination.components:
            continue
        predictor = m.named(objects, "Deployment", "grasp-predictor")
        (container,) = m.pod_spec(predictor)["containers"]
        assert container["image"].startswith("tensorflow/serving:2.")
        args = dict(a.split("=", 1) for a in container["args"])
        assert args["--port"] == "8500"
        config = m.named(objects, "ConfigMap", "tfserving-config")["data"]["models.config"]
        assert 'base_path: "/var/lib/graspfleet/models/grasp_success"' in config
        mounts = {v["mountPath"] for v in container["volumeMounts"]}
        assert "/var/lib/graspfleet/models" in mounts
        assert Path(args["--model_config_file"]).parent.as_posix() in mounts


def test_images_are_pinned(built):
    pyproject = (kustomize.ROOT / "pyproject.toml").read_text()
    (version,) = re.findall(r'^version = "([^"]+)"', pyproject, re.M)
    for name, objects in every(built):
        for workload in m.workloads(objects):
            for container in m.containers(workload):
                image = container["image"]
                assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
                if m.is_graspfleet(container):
                    assert image.endswith(f":{version}"), f"{name}: {image} is not {version}"
                    assert m.pod_labels(workload)["app.kubernetes.io/version"] == version
    dockerfile = (kustomize.ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert bases and re.fullmatch(
        r"python:3\.11\.\d+-slim-\w+|python@sha256:[0-9a-f]{64}", bases[0]
    )
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2, "multi-stage"


def test_the_build_context_holds_what_the_dockerfile_copies():
    dockerfile = (kustomize.ROOT / "Dockerfile").read_text()
    ignore = (kustomize.ROOT / ".dockerignore").read_text().split("\n")
    assert "*" in ignore, "the context starts empty and names what it takes"
    sources = [
        src
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M)
        for src in line.split()[:-1]
    ]
    assert {"pyproject.toml", "constraints.txt", "protos", "services", "robots"} <= set(sources)
    for src in sources:
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is excluded by .dockerignore"
