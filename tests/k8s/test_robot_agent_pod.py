"""The robot agent's pod as its arm's StatefulSet runs it: the init step finds the arm and the
model label from the node's labels through a small real API server on 127.0.0.1, then the
agent container's own command starts the agent for that arm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graspfleet.v1 import robot_agent_pb2, robot_agent_pb2_grpc
from tests.k8s import kustomize
from tests.k8s import manifests as m

SCRIPT = kustomize.K8S / "base" / "robot-agent" / "node_robot_id.py"
ARMS = kustomize.K8S / "base" / "arms"


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    """The arms' files as the pods see them (each mounts its own; here all of them)."""
    folder = tmp_path / "robots"
    folder.mkdir()
    for arm in ARMS.iterdir():
        shutil.copy(arm / f"{arm.name}.yaml", folder)
    return folder


class Nodes:
    """GET /api/v1/nodes/<name> for the nodes given, 404 for others."""

    def __init__(self, labels_by_node: dict[str, dict[str, str]]) -> None:
        nodes = labels_by_node

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.split("?")[0].removeprefix("/api/v1/nodes/")
                if name in nodes:
                    code = 200
                    body = {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {"name": name, "labels": nodes[name]},
                    }
                else:
                    code = 404
                    body = {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "code": 404,
                        "message": f'nodes "{name}" not found',
                    }
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kubeconfig(self, folder: Path) -> Path:
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        path = folder / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "test", "cluster": {"server": url}}],
                    "users": [{"name": "test", "user": {"token": "t"}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                    "current-context": "test",
                }
            )
        )
        return path


@pytest.fixture
def nodes():
    server = Nodes(
        {
            "controller-1": {
                "graspfleet.io/robot-controller": "true",
                "graspfleet.io/robot-id": "kuka-01",
            },
            "controller-2": {
                "graspfleet.io/robot-controller": "true",
                "graspfleet.io/robot-id": "kuka-02",
                "graspfleet.io/model-label": "canary",
            },
            "controller-b": {
                "graspfleet.io/robot-id": "kuka-01",
                "graspfleet.io/model-label": "Stable Version",
            },
            "controller-x": {"graspfleet.io/robot-controller": "true"},
            "controller-9": {"graspfleet.io/robot-id": "kuka-99"},
        }
    )
    yield server
    server.server.shutdown()


def _init(
    node: str, nodes: Nodes, tmp_path: Path, inventory: Path
) -> tuple[subprocess.CompletedProcess, Path]:
    """Runs the init step for `node`; returns its result and the robot-id file."""
    out = tmp_path / "robot-id"
    env = {
        **os.environ,
        "KUBECONFIG": str(nodes.kubeconfig(tmp_path)),
        "NODE_NAME": node,
        "GRASPFLEET_INVENTORY_DIR": str(inventory),
        "ROBOT_ID_FILE": str(out),
        "MODEL_LABEL_FILE": str(tmp_path / "model-label"),
    }
    result = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=kustomize.ROOT,
    )
    return result, out


def test_init_step_refuses_nodes_without_a_known_arm(nodes, tmp_path, inventory):
    result, out = _init("controller-x", nodes, tmp_path, inventory)
    assert result.returncode == 2 and not out.exists()
    assert "kubectl label node controller-x graspfleet.io/robot-id=" in result.stderr
    result, out = _init("controller-9", nodes, tmp_path, inventory)
    assert result.returncode == 2 and "kuka-99" in result.stderr and not out.exists()
    assert "k8s/base/arms/" in result.stderr
    result, out = _init("controller-b", nodes, tmp_path, inventory)
    assert result.returncode == 2 and "model-label=stable --overwrite" in result.stderr
    assert not out.exists()


def test_init_step_defaults_to_the_stable_model(nodes, tmp_path, inventory):
    result, out = _init("controller-1", nodes, tmp_path, inventory)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "kuka-01\n"
    assert (tmp_path / "model-label").read_text() == "stable\n"


def test_the_statefulset_starts_the_agent_of_its_nodes_arm(nodes, tmp_path, inventory):
    result, robot_id_file = _init("controller-2", nodes, tmp_path, inventory)
    assert result.returncode == 0, result.stderr
    assert robot_id_file.read_text() == "kuka-02\n"
    assert (tmp_path / "model-label").read_text() == "canary\n"

    # The agent container exactly as the dev-insecure overlay runs it (plaintext), on loopback.
    agent = m.named(
        kustomize.build(kustomize.K8S / "overlays" / "dev-insecure"),
        "StatefulSet",
        "robot-agent-kuka-02",
    )
    (container,) = m.pod_spec(agent)["containers"]
    # Values from Secrets (the optional auth token) are left out, as when the Secret is absent.
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    port_file = tmp_path / "agent.port"
    env.update(
        ROBOT_ID_FILE=str(robot_id_file),
        MODEL_LABEL_FILE=str(tmp_path / "model-label"),
        GRASPFLEET_HOST="127.0.0.1",
        GRASPFLEET_PORT="0",
        GRASPFLEET_METRICS_PORT="-1",
        GRASPFLEET_PORT_FILE=str(port_file),
        GRASPFLEET_INVENTORY_DIR=str(inventory),
        GRASPFLEET_SPOOL_DIR=str(tmp_path / "spool"),
        # Nobody listens there: the arm explores randomly and spools its episodes.
        GRASPFLEET_PLANNER_ADDRESS="127.0.0.1:9",
        GRASPFLEET_STORE_ADDRESS="127.0.0.1:9",
        # No store to drain the spool to: stop without the pod's long upload window.
        GRASPFLEET_SPOOL_DRAIN_S="1",
    )
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(
        [*container["command"], *container.get("args", [])],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while not port_file.exists():
            assert process.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.2)
        with grpc.insecure_channel(f"127.0.0.1:{int(port_file.read_text())}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            status = robot_agent_pb2_grpc.RobotAgentStub(channel).GetStatus(
                robot_agent_pb2.GetStatusRequest(), timeout=10
            )
        assert status.robot_id == "kuka-02"
        # `exec` made the agent the container's main process, with the node's model label.
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[-5:-1] == [b"--robot-id", b"kuka-02", b"--model-label", b"canary"]
    finally:
        process.terminate()
        process.wait(60)
        log.close()
