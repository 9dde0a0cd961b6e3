"""Init step of a robot agent's pod: which arm this node drives, from its graspfleet.io/robot-id label.

Each arm's StatefulSet is pinned to the node carrying its robot-id label. The
downward API exposes the pod's node name but not the node's labels, so this
step reads the labels through the API server (the pod's service account may
only `get` nodes), checks that the arm is in the inventory mounted into the
pod, and writes its id to ROBOT_ID_FILE for the agent container. The node's
graspfleet.io/model-label label (default "stable") names the model label the
arm grasps with, written to MODEL_LABEL_FILE: labelling a few controllers
"canary" makes them the canary arms. It exits 2 with a message that says what
to fix when a label or the arm is wrong.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kubernetes import client, config

from models import registry
from robots.inventory import InventoryError, find_arm

LABEL = "graspfleet.io/robot-id"
MODEL_LABEL = "graspfleet.io/model-label"
# A model label as the model registry writes them (stable, canary, ...): one syntax everywhere.
DEFAULT_MODEL_LABEL = registry.STABLE


def node_labels(node_name: str, api: client.CoreV1Api) -> dict[str, str]:
    """The node's labels."""
    node = api.read_node(node_name, _request_timeout=30)
    return node.metadata.labels or {}


def main() -> int:
    """Writes the node's robot id to ROBOT_ID_FILE; returns the process exit code."""
    node_name = os.environ["NODE_NAME"]
    inventory = Path(os.environ["GRASPFLEET_INVENTORY_DIR"])
    out = Path(os.environ["ROBOT_ID_FILE"])
    model_label_out = Path(os.environ["MODEL_LABEL_FILE"])
    # In a pod: the service account; KUBECONFIG aims it elsewhere (tests, a laptop).
    if os.environ.get("KUBECONFIG"):
        config.load_kube_config()
    else:
        config.load_incluster_config()
    labels = node_labels(node_name, client.CoreV1Api())
    robot_id = labels.get(LABEL, "")
    model_label = labels.get(MODEL_LABEL, DEFAULT_MODEL_LABEL)
    if not robot_id:
        print(
            f"node {node_name} has no {LABEL} label, so no arm to drive: "
            f"kubectl label node {node_name} {LABEL}=<arm id from the inventory>",
            file=sys.stderr,
        )
        return 2
    try:
        find_arm(robot_id, inventory)
    except InventoryError as err:
        print(
            f"node {node_name} is labelled {LABEL}={robot_id}, but {err}: this pod's arm "
            "folder k8s/base/arms/<arm>/ must hold the arm's file (docs/operations.md, "
            "'Add an arm')",
            file=sys.stderr,
        )
        return 2
    if not registry.LABEL.match(model_label):
        print(
            f"node {node_name}: {MODEL_LABEL}={model_label!r} is not a model label "
            f"(stable, canary, ...): kubectl label node {node_name} {MODEL_LABEL}=stable --overwrite",
            file=sys.stderr,
        )
        return 2
    out.write_text(robot_id + "\n")
    model_label_out.write_text(model_label + "\n")
    print(f"node {node_name} drives arm {robot_id} with the {model_label} model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
