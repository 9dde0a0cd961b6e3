"""The robot agents as deployed: one StatefulSet per arm of the inventory, on the arm's node,
with a spool volume that outlives the pod and holds the agent's byte cap with room to spare."""

from __future__ import annotations

import yaml

from robots.inventory import load_inventory
from services.common.config import config_from
from services.robot_agent.config import AgentConfig
from tests.k8s import kustomize
from tests.k8s import manifests as m

FLEET_DIR = kustomize.ROOT / "robots" / "fleet"
ARMS_DIR = kustomize.K8S / "base" / "arms"
ROBOT_ID = "graspfleet.io/robot-id"
SPOOL_CLASS = "graspfleet-spool"
GIB = 1024**3


def every(built: dict) -> list[tuple[str, list[dict]]]:
    return [(c.name, objects) for c, objects in built.items()]


def arm_ids() -> list[str]:
    return sorted(a.id for a in load_inventory(FLEET_DIR))


def agents(objects: list[dict]) -> dict[str, dict]:
    """Robot id -> its agent's StatefulSet."""
    found = {}
    for workload in m.workloads(objects):
        if m.pod_labels(workload).get("app.kubernetes.io/name") == "robot-agent":
            assert workload["kind"] == "StatefulSet", kustomize.describe(workload)
            found[m.pod_labels(workload)[ROBOT_ID]] = workload
    return found


def agent_config(container: dict) -> AgentConfig:
    return config_from(AgentConfig, {"robot_id": "kuka-01"}, m.env(container))


def test_every_arm_has_one_agent_on_its_node(built):
    for name, objects in every(built):
        assert not m.of_kind(objects, "DaemonSet"), name
        by_arm = agents(objects)
        assert sorted(by_arm) == arm_ids(), name
        headless = m.named(objects, "Service", "robot-agent")["spec"]
        assert headless["clusterIP"] == "None"
        for arm, agent in by_arm.items():
            at = f"{name}: {kustomize.describe(agent)}"
            assert agent["metadata"]["name"] == f"robot-agent-{arm}", at
            # One pod per arm, never two: a StatefulSet of one replica.
            assert agent["spec"]["replicas"] == 1, at
            assert agent["spec"]["serviceName"] == "robot-agent", at
            assert m.selects(agent["spec"]["selector"], m.pod_labels(agent)), at
            pod = m.pod_spec(agent)
            assert pod["nodeSelector"] == {"graspfleet.io/robot-controller": "true", ROBOT_ID: arm}
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
            assert m.TOKEN_PATH in {v["mountPath"] for v in init["volumeMounts"]}
            assert m.TOKEN_PATH not in {v["mountPath"] for v in main["volumeMounts"]}
            # The pod sees its own arm's file of the inventory, as in robots/fleet/.
            inventory = [v for v in pod["volumes"] if v["name"] == "inventory"][0]
            cm = m.named(objects, "ConfigMap", inventory["configMap"]["name"])
            source = FLEET_DIR / f"{arm}.yaml"
            assert cm["data"] == {source.name: source.read_text()}, at
        role = m.named(objects, "ClusterRole", "graspfleet-robot-agent")
        assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]


def test_the_arm_folders_are_robots_fleet():
    """k8s/base/arms/<arm>/<arm>.yaml is a copy of robots/fleet/<arm>.yaml (kustomize cannot
    read outside k8s/), each folder is listed in the base, and the dev cluster has every arm."""
    source = {p.name: p.read_bytes() for p in FLEET_DIR.glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in ARMS_DIR.glob("*/*.yaml") if p.stem == p.parent.name}
    assert copies == source, (
        "copy robots/fleet/<arm>.yaml to k8s/base/arms/<arm>/ (docs/operations.md)"
    )
    base = yaml.safe_load((kustomize.K8S / "base" / "kustomization.yaml").read_text())
    folders = sorted(p.name for p in ARMS_DIR.iterdir() if p.is_dir())
    assert folders == arm_ids()
    assert [r for r in base["resources"] if r.startswith("arms/")] == [f"arms/{a}" for a in folders]
    for arm in folders:
        kustomization = yaml.safe_load((ARMS_DIR / arm / "kustomization.yaml").read_text())
        assert kustomization["nameSuffix"] == f"-{arm}"
        assert kustomization["configMapGenerator"][0]["files"] == [f"{arm}.yaml"]
    kind = yaml.safe_load((kustomize.K8S / "overlays" / "dev" / "kind.yaml").read_text())
    labelled = sorted(n["labels"][ROBOT_ID] for n in kind["nodes"] if "labels" in n)
    assert labelled == arm_ids()


def test_the_spool_outlives_the_pod_and_holds_the_cap(built):
    """A claim per arm, kept when the pod or the StatefulSet goes; larger than the agent's
    spool_max_bytes by the episode finished at the cap, rejected/ and filesystem overhead."""
    for name, objects in every(built):
        for agent in agents(objects).values():
            at = f"{name}: {kustomize.describe(agent)}"
            (container,) = m.pod_spec(agent)["containers"]
            config = agent_config(container)
            mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
            volume = mounts[config.spool_dir]
            # Not a pod volume (emptyDir, ephemeral: deleted with the pod): a claim template.
            assert volume not in {v["name"] for v in m.pod_spec(agent)["volumes"]}, at
            claims = agent["spec"].get("volumeClaimTemplates", [])
            (claim,) = [c for c in claims if c["metadata"]["name"] == volume]
            retention = agent["spec"].get("persistentVolumeClaimRetentionPolicy", {})
            assert retention.get("whenDeleted", "Retain") == "Retain", at
            assert retention.get("whenScaled", "Retain") == "Retain", at
            assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], at
            size = m.quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
            cap = config.spool_max_bytes
            assert size >= cap + max(GIB, cap // 4), f"{at}: {size} bytes for a {cap} byte cap"
            assert cap == 4 * GIB, at


def test_the_fleet_spools_on_local_volumes_of_each_arms_node(built):
    for name, objects in every(built):
        by_arm = agents(objects)
        templates = [a["spec"].get("volumeClaimTemplates") for a in by_arm.values()]
        assert all(templates), f"{name}: an agent without a spool claim"
        classes = {c["spec"].get("storageClassName") for claims in templates for c in claims}
        if not name.startswith("fleet"):
            # The dev cluster's default class (kind: local-path, on the pod's node).
            assert classes == {None}, name
            assert not m.of_kind(objects, "PersistentVolume"), name
            continue
        assert classes == {SPOOL_CLASS}, name
        storage_class = m.named(objects, "StorageClass", SPOOL_CLASS)
        assert storage_class["provisioner"] == "kubernetes.io/no-provisioner"
        assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"
        assert storage_class["reclaimPolicy"] == "Retain"
        volumes = {
            (v["spec"]["claimRef"]["namespace"], v["spec"]["claimRef"]["name"]): v
            for v in m.of_kind(objects, "PersistentVolume")
        }
        for arm, agent in by_arm.items():
            (claim,) = agent["spec"]["volumeClaimTemplates"]
            pvc = f"{claim['metadata']['name']}-{agent['metadata']['name']}-0"
            volume = volumes.pop((kustomize.NAMESPACE, pvc))["spec"]
            assert volume["storageClassName"] == SPOOL_CLASS
            assert volume["persistentVolumeReclaimPolicy"] == "Retain"
            assert "local" in volume and "hostPath" not in volume
            assert volume["accessModes"] == claim["spec"]["accessModes"]
            assert m.quantity_bytes(volume["capacity"]["storage"]) >= m.quantity_bytes(
                claim["spec"]["resources"]["requests"]["storage"]
            )
            (term,) = volume["nodeAffinity"]["required"]["nodeSelectorTerms"]
            assert term["matchExpressions"] == [
                {"key": ROBOT_ID, "operator": "In", "values": [arm]}
            ]
        assert not volumes, f"{name}: volumes for no arm: {sorted(volumes)}"
