"""Every overlay × component combination of k8s/ builds, validates strictly, and is what an SRE expects.

The combinations, the builds, the strict schema validation and the namespace
check are tests/k8s/kustomize.py's (the same code `make k8s-validate` runs);
the rest checks properties of the built objects: hardened pods, probes,
resources, labels, settings the services really have, ports, storage, RBAC,
autoscaling and disruption budgets. NetworkPolicies, the robot agents, GPU
training and TLS have files of their own.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
from pathlib import Path

import pytest

from services import cli
from services.common import upstream
from services.common.config import ConfigError, ServerConfig, config_from
from services.common.kube import NONROOT_UID
from services.common.server import LIVENESS
from services.sim_farm.config import ShardConfig
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
# The volume types the "restricted" Pod Security Standard allows (the namespace enforces it).
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# GRASPFLEET_ variables that are no setting of a service's config: the clients read them
# (the CA that servers are checked against, the certificate the process presents).
CLIENT_ENV = {upstream.TLS_CA_ENV, "GRASPFLEET_TLS_CLIENT_DIR"}
# The Secret whose key `token` holds the bearer token each service's auth_token setting reads.
TOKEN_SECRETS = {
    "trainer": "graspfleet-trainer-token",
    "store": "graspfleet-store-token",
    "agent": "graspfleet-agent-token",
}


def every(built: dict) -> list[tuple[str, list[dict]]]:
    return [(c.name, objects) for c, objects in built.items()]


def insecure(name: str) -> bool:
    """The build is overlays/dev-insecure's, with or without components."""
    return name.split("+")[0] == "dev-insecure"


@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: c.name)
def test_every_combination_builds_and_validates_strictly(built, combination):
    objects = built[combination]
    assert m.of_kind(objects, "Deployment") and m.of_kind(objects, "StatefulSet")
    fresh = []
    for obj in objects:
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        if digest not in _validated:
            fresh.append(obj)
            _validated.add(digest)
    assert kustomize.validate(fresh, VERSIONS) == []


@pytest.mark.parametrize(
    "combination", [*COMBINATIONS, kustomize.Combination("root")], ids=lambda c: c.name
)
def test_every_namespaced_object_lands_in_the_graspfleet_namespace(built, combination):
    """`kubectl apply -k` must not put anything in the kubectl context's namespace."""
    assert kustomize.namespace_errors(built[combination]) == []


def test_the_namespace_check_refuses_strays():
    stray = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    elsewhere = {"kind": "Service", "metadata": {"name": "s", "namespace": "default"}}
    cluster = {"kind": "ClusterRole", "metadata": {"name": "r", "namespace": "graspfleet"}}
    unknown = {"kind": "Gadget", "metadata": {"name": "g", "namespace": "graspfleet"}}
    errors = kustomize.namespace_errors([stray, elsewhere, cluster, unknown])
    assert len(errors) == 4 and "ConfigMap/c: namespace None" in errors[0]
    assert (
        kustomize.namespace_errors(
            [{**stray, "metadata": {"name": "c", "namespace": "graspfleet"}}]
        )
        == []
    )


def test_k8s_root_is_the_dev_overlay(built):
    root = built[kustomize.Combination("root")]
    assert root == built[kustomize.Combination("dev")]
    assert len(VERSIONS) >= 5 and VERSIONS[0] == "1.30"


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
            for volume in pod.get("volumes", []):
                kinds = set(volume) - {"name"}
                assert kinds <= RESTRICTED_VOLUMES, f"{where}: {volume['name']} is {kinds}"
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


def readiness_services() -> dict[str, str]:
    """`graspfleet <name> serve` -> the health service name its readiness is reported under.

    The services' own constants, so that renaming one breaks the probe test. Imported here
    rather than at the top: most server modules load TensorFlow.
    """
    from services.episode_store.server import SERVICE_NAME as STORE
    from services.grasp_predictor.server import PREDICTION_SERVICE
    from services.refiner.server import SERVICE_NAME as REFINER
    from services.robot_agent.server import SERVICE_NAME as AGENT
    from services.servo_planner.server import SERVICE_NAME as PLANNER
    from services.sim_farm.server import SERVICE_NAME as SIM_FARM
    from services.trainer.server import SERVICE_NAME as TRAINER

    return {
        "store": STORE,
        "predictor": PREDICTION_SERVICE,
        "planner": PLANNER,
        "sim-farm": SIM_FARM,
        "agent": AGENT,
        "trainer": TRAINER,
        "refiner": REFINER,
    }


def test_servers_have_native_grpc_probes_on_liveness_and_their_own_readiness(built):
    """Startup and liveness ask the health service `liveness` (SERVING while the server listens:
    a store without its database or a planner without a predictor is not restarted for it);
    readiness asks the service's own name. On the gRPC port, or on the plaintext health port
    when the server speaks TLS (tests/k8s/test_tls.py)."""
    services = readiness_services()
    assert set(services) == set(cli.SERVICES), "every service needs its readiness name here"
    probed = set()
    for name, objects in every(built):
        for workload in m.workloads(objects):
            for container in m.containers(workload, init=False):
                at = f"{name}: {kustomize.describe(workload)}"
                for probe in PROBES:
                    assert probe in container, f"{at}: no {probe}"
                ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
                if "grpc" not in ports:
                    continue
                if not m.is_graspfleet(container):
                    # TensorFlow Serving has no gRPC health service: TCP on its gRPC port.
                    for probe in PROBES:
                        tcp = container[probe].get("tcpSocket")
                        assert tcp == {"port": ports["grpc"]}, f"{at}: {probe}"
                    continue
                env = m.env(container)
                port = int(env["GRASPFLEET_PORT"])
                assert ports["grpc"] == port, at
                assert ports["metrics"] == int(env["GRASPFLEET_METRICS_PORT"]), at
                assert env["GRASPFLEET_HOST"] == "0.0.0.0", at
                probe_port = int(env.get("GRASPFLEET_HEALTH_PORT", port))
                command = m.graspfleet_command(container)[1]
                expected = {
                    "startupProbe": LIVENESS,
                    "livenessProbe": LIVENESS,
                    "readinessProbe": services[command],
                }
                for probe, service in expected.items():
                    assert container[probe]["grpc"] == {"port": probe_port, "service": service}, (
                        f"{at}: {probe}"
                    )
                probed.add(command)
    assert probed == set(cli.SERVICES)


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
                unknown = {
                    k
                    for k in env
                    if k.removeprefix("GRASPFLEET_") not in fields and k not in CLIENT_ENV
                }
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


def test_calls_that_change_state_need_the_token_from_its_secret(built):
    """Every service with an auth_token setting (the trainer; the store's Relabel; the agents'
    Pause and Resume) reads it from its Secret: required (the pod does not start without it)
    but in dev-insecure, where without it the service runs unauthenticated and logs so."""
    for name, objects in every(built):
        guarded = set()
        for workload in m.workloads(objects):
            for container in m.containers(workload, init=False):
                words = m.graspfleet_command(container)
                if not words:
                    continue
                at = f"{name}: {kustomize.describe(workload)}"
                cls = _config_class(words[1])
                tokens = [e for e in container["env"] if e["name"] == "GRASPFLEET_AUTH_TOKEN"]
                if cls is None or "auth_token" not in cls.__dataclass_fields__:
                    assert not tokens, at
                    continue
                assert words[1] in TOKEN_SECRETS, f"{at}: which Secret holds its token?"
                assert len(tokens) == 1, f"{at}: GRASPFLEET_AUTH_TOKEN is not set once"
                (token,) = tokens
                assert "value" not in token, f"{at}: a token in the manifest"
                reference = token["valueFrom"]["secretKeyRef"]
                assert reference.get("optional", False) == insecure(name), at
                assert reference["name"] == TOKEN_SECRETS[words[1]], at
                assert reference["key"] == "token", at
                guarded.add(words[1])
        assert guarded == set(TOKEN_SECRETS), name


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
            targets = m.backing(service, m.workloads(objects))
            # Only the agents' headless Service (one name per arm's pod) has several.
            assert len(targets) == 1 or service["spec"].get("clusterIP") == "None", name
            for target in targets:
                ports = m.container_ports(target)
                for port in service["spec"]["ports"]:
                    at = f"{name}: {kustomize.describe(service)} {port}"
                    assert port["targetPort"] in ports, at
                    if port["name"] == "grpc":
                        assert ports["grpc"] == port["port"], at


def test_addresses_name_services_and_their_ports(built):
    for name, objects in every(built):
        services = {s["metadata"]["name"]: s for s in m.of_kind(objects, "Service")}
        for workload in m.workloads(objects):
            for container in m.containers(workload):
                for setting, host, port in m.upstreams(container):
                    assert host in services, f"{name}: {setting}={host}:{port}"
                    assert port in [p["port"] for p in services[host]["spec"]["ports"]]


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


def test_sim_farm_may_run_its_shard_jobs_and_nothing_more(built):
    """Its Role creates, follows and deletes Jobs and lists their pods; the pods hold no token."""
    for name, objects in every(built):
        farm = m.named(objects, "Deployment", "sim-farm")
        container = m.pod_spec(farm)["containers"][0]
        env = m.env(container)
        assert env["GRASPFLEET_COLLECTION_BACKEND"] == "kubernetes", name
        # The shard pods run the farm's own image, whatever registry the overlay names.
        assert env["GRASPFLEET_K8S_IMAGE"] == container["image"], name
        assert m.mounts_api_token(farm), name
        account = m.pod_spec(farm)["serviceAccountName"]
        binding = m.named(objects, "RoleBinding", "graspfleet-sim-farm")
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
        assert grants == {
            ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
            ("", "pods"): {"list"},
        }, name
        shard_account = m.named(objects, "ServiceAccount", env["GRASPFLEET_K8S_SERVICE_ACCOUNT"])
        assert shard_account["automountServiceAccountToken"] is False
        bound = {
            s["name"] for b in m.of_kind(objects, "RoleBinding") for s in b.get("subjects", [])
        }
        assert shard_account["metadata"]["name"] not in bound, name


def test_shard_jobs_validate_strictly_and_are_hardened(built):
    """The Job the sim-farm creates with each combination's settings, as the API gets it."""
    for combination, objects in built.items():
        name = combination.name
        job = m.shard_job(objects)
        at = f"{name}: the sim-farm's shard Job"
        assert kustomize.validate([job], VERSIONS) == [], at
        assert job["metadata"]["namespace"] == "graspfleet", at
        spec = job["spec"]
        assert spec["completionMode"] == "Indexed" and spec["completions"] == 10, at
        pod = spec["template"]["spec"]
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["seccompProfile"]["type"] == "RuntimeDefault"
        assert ctx["runAsUser"] == ctx["runAsGroup"] == NONROOT_UID, at
        assert pod["automountServiceAccountToken"] is False, at
        m.named(objects, "ServiceAccount", pod["serviceAccountName"])
        for volume in pod["volumes"]:
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, f"{at}: {volume}"
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"], at
        assert sc["capabilities"] == {"drop": ["ALL"]}, at
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), at
        farm = m.pod_spec(m.named(objects, "Deployment", "sim-farm"))["containers"][0]
        assert container["image"] == farm["image"], at
        assert m.repository(container["image"]) == m.IMAGE, at
        # Its settings are the shard command's, and that command accepts them.
        values = {**m.env(container), "GRASPFLEET_PLAN": container["args"][1]}
        config_from(ShardConfig, {}, values)
        unknown = {
            k
            for k in values
            if k.startswith("GRASPFLEET_")
            and k.removeprefix("GRASPFLEET_").lower() not in ShardConfig.__dataclass_fields__
            and k not in CLIENT_ENV
        }
        assert not unknown, f"{at} sets {unknown}"
        assert (upstream.TLS_CA_ENV in m.env(container)) == combination.includes("tls"), at


def test_autoscalers(built):
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


def _fewest_replicas(objects: list[dict], workload: dict) -> int:
    """The fewest pods a Deployment or StatefulSet runs: its HPA's minimum, else its replicas."""
    for hpa in m.of_kind(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) == (workload["kind"], workload["metadata"]["name"]):
            return hpa["spec"]["minReplicas"]
    return workload["spec"].get("replicas", 1)


def test_disruption_budgets_protect_replicated_workloads_and_only_them(built):
    """A budget over one replica protects nothing (or blocks every drain): replicated
    workloads get one that keeps a replica serving, spread over nodes; single ones none."""
    for name, objects in every(built):
        pdbs = m.of_kind(objects, "PodDisruptionBudget")
        covered = set()
        replicated = set()
        for workload in m.workloads(objects):
            if workload["kind"] not in ("Deployment", "StatefulSet"):
                continue
            at = f"{name}: {kustomize.describe(workload)}"
            labels = m.pod_labels(workload)
            covering = [p for p in pdbs if m.selects(p["spec"]["selector"], labels)]
            covered |= {p["metadata"]["name"] for p in covering}
            fewest = _fewest_replicas(objects, workload)
            if fewest < 2:
                assert covering == [], f"{at}: {fewest} replica, budget protects nothing"
                continue
            replicated.add(workload["metadata"]["name"])
            (pdb,) = covering
            spec = pdb["spec"]
            if "minAvailable" in spec:
                assert 1 <= spec["minAvailable"] <= fewest - 1, at
            else:
                assert 1 <= spec["maxUnavailable"] <= fewest - 1, at
            # Unready replicas (no model yet) must not block drains.
            assert spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow", at
            spread = [
                c
                for c in m.pod_spec(workload).get("topologySpreadConstraints", [])
                if c["topologyKey"] == "kubernetes.io/hostname"
            ]
            assert len(spread) == 1, f"{at}: replicas not spread over nodes"
            (spread,) = spread
            assert spread["maxSkew"] == 1 and spread["whenUnsatisfiable"] == "DoNotSchedule", at
            assert m.selects(spread["labelSelector"], labels), at
            # Tainted nodes (robot controllers, GPU nodes) take no replica: no domain.
            assert spread["nodeTaintsPolicy"] == "Honor", at
        assert covered == {p["metadata"]["name"] for p in pdbs}, f"{name}: a budget covers nothing"
        if name == "fleet":
            assert replicated == {"grasp-predictor", "servo-planner", "refiner"}


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
        agents = [
            s
            for s in m.of_kind(objects, "StatefulSet")
            if s["metadata"]["name"].startswith("robot-agent-")
        ]
        assert agents
        for agent in agents:
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
                # The training Jobs' image, too.
                job_image = m.env(container).get("GRASPFLEET_K8S_IMAGE")
                if job_image:
                    assert m.repository(job_image) in (m.IMAGE, m.GPU_IMAGE), f"{name}: {job_image}"
                    assert job_image.endswith(f":{version}"), f"{name}: {job_image}"
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
