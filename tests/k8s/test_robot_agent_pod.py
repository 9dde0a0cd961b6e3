"""The robot agent's pod as its arm's StatefulSet runs it: the init step finds the arm and the
model label from the node's labels through a small real API server on 127.0.0.1, then the
agent container's own command starts the agent for that arm, in plaintext (dev-insecure) or
with its own certificate, requiring its callers' (dev)."""

from __future__ import annotations

import base64
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
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graspfleet.v1 import robot_agent_pb2, robot_agent_pb2_grpc
from tests.k8s import kustomize
from tests.k8s import manifests as m

SCRIPT = kustomize.K8S / "base" / "robot-agent" / "node_robot_id.py"
ARMS = kustomize.K8S / "base" / "arms"
AGENT_SECRET = "graspfleet-tls-robot-agent-kuka-02"
TLS_DIR = "/etc/graspfleet/tls"


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


def _certificates(tmp_path: Path) -> tuple[Path, Path]:
    """kuka-02's agent certificate and a person's, from k8s/bootstrap-tls.sh: two folders of
    tls.crt, tls.key and ca.crt (the agent's as its pod mounts its Secret)."""
    script = [str(kustomize.K8S / "bootstrap-tls.sh"), "--ca-dir", str(tmp_path / "ca")]
    env = {**os.environ, "KUBECTL": kustomize.kubectl()}
    subprocess.run([*script, "--out", str(tmp_path / "secrets")], env=env, check=True, timeout=300)
    person = tmp_path / "user"
    subprocess.run([*script, "--user", "ana", "--out", str(person)], env=env, check=True)
    secret = yaml.safe_load((tmp_path / "secrets" / f"{AGENT_SECRET}.yaml").read_text())
    agent = tmp_path / "tls"
    agent.mkdir()
    for key, value in secret["data"].items():
        (agent / key).write_bytes(base64.b64decode(value))
    return agent, person


def _agent_env(overlay: str, tmp_path: Path, inventory: Path) -> tuple[list[str], dict]:
    """The agent container's command and environment exactly as `overlay` runs it, on
    loopback, with the pod's files in tmp_path."""
    agent = m.named(
        kustomize.build(kustomize.K8S / "overlays" / overlay), "StatefulSet", "robot-agent-kuka-02"
    )
    (container,) = m.pod_spec(agent)["containers"]
    # Values from Secrets (the auth token) are left out, as when the Secret is optional and absent.
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # The certificate Secret's folder, where this test put the files.
    env = {k: v.replace(TLS_DIR, str(tmp_path / "tls")) for k, v in env.items()}
    env.update(
        ROBOT_ID_FILE=str(tmp_path / "robot-id"),
        MODEL_LABEL_FILE=str(tmp_path / "model-label"),
        GRASPFLEET_HOST="127.0.0.1",
        GRASPFLEET_PORT="0",
        GRASPFLEET_METRICS_PORT="-1",
        GRASPFLEET_PORT_FILE=str(tmp_path / "agent.port"),
        GRASPFLEET_INVENTORY_DIR=str(inventory),
        GRASPFLEET_SPOOL_DIR=str(tmp_path / "spool"),
        # Nobody listens there: the arm explores randomly and spools its episodes.
        GRASPFLEET_PLANNER_ADDRESS="127.0.0.1:9",
        GRASPFLEET_STORE_ADDRESS="127.0.0.1:9",
        # No store to drain the spool to: stop without the pod's long upload window.
        GRASPFLEET_SPOOL_DRAIN_S="1",
    )
    if "GRASPFLEET_HEALTH_PORT" in env:
        env["GRASPFLEET_HEALTH_PORT"] = "0"
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return [*container["command"], *container.get("args", [])], env


def _channel(port: int, client: Path | None) -> grpc.Channel:
    """Plaintext without `client`; else TLS presenting the certificate in that folder."""
    if client is None:
        return grpc.insecure_channel(f"127.0.0.1:{port}")
    credentials = grpc.ssl_channel_credentials(
        *((client / name).read_bytes() for name in ("ca.crt", "tls.key", "tls.crt"))
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def _status(channel: grpc.Channel) -> robot_agent_pb2.AgentStatus:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    return robot_agent_pb2_grpc.RobotAgentStub(channel).GetStatus(
        robot_agent_pb2.GetStatusRequest(), timeout=10
    )


@pytest.mark.parametrize("overlay", ["dev-insecure", "dev"])
def test_the_statefulset_starts_the_agent_of_its_nodes_arm(nodes, tmp_path, inventory, overlay):
    """dev-insecure's agent speaks plaintext; dev's serves TLS with the certificate
    bootstrap-tls.sh made for it and takes only callers with a certificate of the fleet's CA."""
    result, robot_id_file = _init("controller-2", nodes, tmp_path, inventory)
    assert result.returncode == 0, result.stderr
    assert robot_id_file.read_text() == "kuka-02\n"
    assert (tmp_path / "model-label").read_text() == "canary\n"
    person = _certificates(tmp_path)[1] if overlay == "dev" else None
    command, env = _agent_env(overlay, tmp_path, inventory)
    port_file = tmp_path / "agent.port"
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not port_file.exists():
            assert process.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.2)
        port = int(port_file.read_text())
        with _channel(port, person) as channel:
            assert _status(channel).robot_id == "kuka-02"
        if person is not None:
            # No client certificate, no call: the handshake fails.
            anonymous = grpc.ssl_channel_credentials((person / "ca.crt").read_bytes())
            channel = grpc.secure_channel(f"127.0.0.1:{port}", anonymous)
            with channel, pytest.raises(grpc.RpcError):
                _status(channel)
        # `exec` made the agent the container's main process, with the node's model label.
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[-5:-1] == [b"--robot-id", b"kuka-02", b"--model-label", b"canary"]
    finally:
        process.terminate()
        process.wait(60)
        log.close()
