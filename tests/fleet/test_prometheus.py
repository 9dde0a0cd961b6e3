"""End to end: a real Prometheus scrapes the running agents; its success rate equals the store's."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import pytest

from graspfleet.v1 import episode_store_pb2, robot_agent_pb2, robot_agent_pb2_grpc
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.fleet.process import ServiceProcess
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server as create_predictor
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from tests.fixtures import models

ROBOTS = ("kuka-01", "kuka-02")
SUCCESS_RATE = (
    "sum by (robot_id) (graspfleet_agent_grasp_successes_total)"
    " / sum by (robot_id) (graspfleet_agent_grasp_attempts_total)"
)

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs Debian's prometheus (make sysdeps)"
)


def _free_port() -> int:
    # Prometheus cannot report a port it chose itself; ask the kernel for a free one.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(port: int, promql: str) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    return {r["metric"].get("robot_id", ""): float(r["value"][1]) for r in body["data"]["result"]}


def test_promql_success_rate_per_robot_equals_the_store(tmp_path):
    models.publish(tmp_path / "models", 1, bias=0.0)
    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "store")))
    predictor = create_predictor(
        PredictorConfig(port=0, model_base_path=str(tmp_path / "models"), settle_s=0)
    )
    planner = create_planner(PlannerConfig(port=0, predictor_address=predictor.address))
    agents, prometheus = [], None
    try:
        for robot in ROBOTS:
            agent = ServiceProcess(
                f"agent-{robot}",
                ["agent", "serve"],
                {
                    "robot_id": robot,
                    "planner_address": planner.address,
                    "store_address": store.address,
                    "spool_dir": str(tmp_path / "spool"),
                    "metrics_port": "0",
                    "max_steps": "4",
                    "exploration": "eps-mix",
                    "epsilon": "0.5",
                },
                tmp_path / "logs",
            )
            agents.append(agent.start(timeout_s=120))
        targets = [f"127.0.0.1:{a.metrics_port}" for a in agents]
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs:\n  - job_name: robot-agents\n    static_configs:\n      - targets: {json.dumps(targets)}\n"
        )
        web_port = _free_port()
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115 - the child owns it
        )
        # Let the agents grasp, then hold them still so the numbers stop moving.
        channels = [grpc.insecure_channel(a.address) for a in agents]
        stubs = [robot_agent_pb2_grpc.RobotAgentStub(c) for c in channels]
        deadline = time.monotonic() + 120
        while (
            min(s.GetStatus(robot_agent_pb2.GetStatusRequest()).episodes_attempted for s in stubs)
            < 4
        ):
            assert time.monotonic() < deadline, "agents did not grasp"
            time.sleep(0.5)
        for stub in stubs:
            stub.Pause(robot_agent_pb2.PauseRequest(reason="measure"))
        deadline = time.monotonic() + 60
        while not all(
            s.GetStatus(robot_agent_pb2.GetStatusRequest()).state
            == robot_agent_pb2.AGENT_STATE_PAUSED
            and s.GetStatus(robot_agent_pb2.GetStatusRequest()).spool_depth == 0
            for s in stubs
        ):
            assert time.monotonic() < deadline, "agents did not pause and drain"
            time.sleep(0.5)
        channel, store_stub = client.connect(store.address)
        with channel:
            stats = store_stub.Stats(episode_store_pb2.StatsRequest())
        expected = {}
        for robot in ROBOTS:
            groups = [g for g in stats.groups if g.robot_id == robot]
            expected[robot] = sum(g.successes for g in groups) / sum(g.labeled for g in groups)
        # Wait for a scrape after the pause, then compare.
        deadline = time.monotonic() + 60
        while True:
            try:
                got = _query(web_port, SUCCESS_RATE)
                if set(got) == set(ROBOTS) and all(
                    abs(got[r] - expected[r]) < 1e-9 for r in ROBOTS
                ):
                    break
            except OSError:
                got = {}
            assert time.monotonic() < deadline, f"Prometheus says {got}, the store {expected}"
            time.sleep(1.0)
        for c in channels:
            c.close()
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        for agent in agents:
            agent.stop()
        for server in (planner, predictor, store):
            server.stop(grace_s=0)
