"""Init step of a robot agent's pod: which arm this node drives, from its graspfleet.io/robot-id label.

The downward API exposes the pod's node name but not the node's labels, so
this step reads the label through the API server (the pod's service account
may only `get` nodes), checks that the arm is in the inventory, and writes its
id to ROBOT_ID_FILE for the agent container. It exits 2 with a message that
says what to fix when the label or the arm is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kubernetes import client, config

from robots.inventory import InventoryError, find_arm

LABEL = "graspfleet.io/robot-id"


def robot_id_of(node_name: str, api: client.CoreV1Api) -> str:
    """The node's robot-id label; empty when it has none."""
    node = api.read_node(node_name, _request_timeout=30)
    return (node.metadata.labels or {}).get(LABEL, "")


def main() -> int:
    """Writes the node's robot id to ROBOT_ID_FILE; returns the process exit code."""
    node_name = os.environ["NODE_NAME"]
    inventory = Path(os.environ["GRASPFLEET_INVENTORY_DIR"])
    out = Path(os.environ["ROBOT_ID_FILE"])
    # In a pod: the service account; KUBECONFIG aims it elsewhere (tests, a laptop).
    if os.environ.get("KUBECONFIG"):
        config.load_kube_config()
    else:
        config.load_incluster_config()
    robot_id = robot_id_of(node_name, client.CoreV1Api())
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
            f"node {node_name} is labelled {LABEL}={robot_id}, but {err}: add the arm's file "
            "to k8s/base/robots/ (see docs/operations.md, 'Add an arm')",
            file=sys.stderr,
        )
        return 2
    out.write_text(robot_id + "\n")
    print(f"node {node_name} drives arm {robot_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
