"""End to end: a real Prometheus scrapes the running fleet with the deployment's rules loaded.

The recorded success rate per robot, model version and domain
(k8s/components/prometheus-operator/prometheusrule.yaml) equals the store's
Stats; every rule evaluates without error and every dashboard query runs.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import pytest

from graspfleet.v1 import episode_store_pb2, robot_agent_pb2, robot_agent_pb2_grpc
from services.episode_store import client
from services.fleet import report
from services.fleet.process import ServiceProcess
from services.fleet.prometheus import LocalPrometheus
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from tests.fixtures import models
from tests.k8s import prometheus_rules

ROBOTS = ("kuka-01", "kuka-02")
SUCCESS_RATE = "graspfleet:grasp_success:ratio"
GROUP = ("robot_id", "model_version", "domain")

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs Debian's prometheus (make sysdeps)"
)


LABELS = "graspfleet:model_version_label:info"


def _query(prometheus: LocalPrometheus, promql: str) -> dict[tuple[str, ...], float]:
    """Samples by (robot_id, model_version, domain)."""
    return {tuple(m.get(k, "") for k in GROUP): v for m, v in prometheus.query(promql)}


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(prometheus_rules.DASHBOARD.read_text())
    return [
        # The dashboard's variables, set to "all".
        t["expr"].replace("$namespace", ".*").replace("$domain", ".*")
        for panel in dashboard["panels"]
        for t in panel.get("targets", [])
    ]


def _scraped(name: str, command: list[str], flags: dict[str, str], tmp_path) -> ServiceProcess:
    """A service in its own process, with a metrics port for Prometheus."""
    flags = {**flags, "metrics_port": "0", "log_format": "text"}
    return ServiceProcess(name, command, flags, tmp_path / "logs")


def test_recorded_success_rate_equals_the_store(tmp_path, monkeypatch):
    models.publish(tmp_path / "models", 1, bias=0.0)
    # The store and the predictor that Prometheus scrapes run in processes of their own, as
    # deployed: this process's metrics registry also counts the stores and agents that
    # earlier tests ran in it. The planner is not scraped.
    store = _scraped(
        "episode-store", ["store", "serve"], {"data_dir": str(tmp_path / "store")}, tmp_path
    )
    predictor = _scraped(
        "grasp-predictor",
        ["predictor", "serve"],
        {"model_base_path": str(tmp_path / "models"), "settle_s": "0"},
        tmp_path,
    )
    planner, agents, prometheus = None, [], None
    try:
        store.start(timeout_s=120)
        predictor.start(timeout_s=120)
        planner = create_planner(PlannerConfig(port=0, predictor_address=predictor.address))
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
        # The local fleet's Prometheus (make run starts the same), scrape jobs named as the
        # ServiceMonitor and PodMonitor name them (app.kubernetes.io/name).
        # A relative folder, as make run's var/fleet is: the scrape targets must still be found.
        monkeypatch.chdir(tmp_path)
        prometheus = LocalPrometheus(Path("prometheus"), interval_s=1.0)
        prometheus.start(["robot-agent", "episode-store", "grasp-predictor"])
        for agent in agents:
            prometheus.scrape("robot-agent", f"127.0.0.1:{agent.metrics_port}")
        prometheus.scrape("episode-store", f"127.0.0.1:{store.metrics_port}")
        prometheus.scrape("grasp-predictor", f"127.0.0.1:{predictor.metrics_port}")
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
        # An episode no model drove (every command exploration) is model_version "none".
        expected = {
            (g.robot_id, str(g.model.version) if g.model.name else "none", "real"): (
                g.successes / g.labeled
            )
            for g in stats.groups
            if g.labeled
        }
        assert {key[0] for key in expected} == set(ROBOTS)
        # Wait for a scrape and a rule evaluation after the pause, then compare.
        deadline = time.monotonic() + 60
        while True:
            try:
                got = _query(prometheus, SUCCESS_RATE)
                if set(got) == set(expected) and all(
                    abs(got[k] - expected[k]) < 1e-9 for k in expected
                ):
                    break
            except OSError:
                got = {}
            assert time.monotonic() < deadline, f"Prometheus records {got}, the store {expected}"
            time.sleep(1.0)
        # make run's report reads the same recorded series from its Prometheus.
        recorded = report.prometheus_table(prometheus)
        assert all(f"| {robot} |" in recorded for robot in ROBOTS), recorded
        # Every rule evaluates on the real metrics (a bad join shows up as lastError).
        groups = prometheus.api("rules")["groups"]
        assert {g["name"] for g in groups} == {g["name"] for g in prometheus_rules.rule_groups()}
        for group in groups:
            for rule in group["rules"]:
                assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        # Its rule group evaluates on its own clock: wait for its first evaluation too.
        deadline = time.monotonic() + 60
        while not (labels := prometheus.api("query", query=LABELS)["result"]):
            assert time.monotonic() < deadline, f"{LABELS} never recorded"
            time.sleep(1.0)
        assert {(r["metric"]["label"], r["metric"]["model_version"]) for r in labels} == {
            ("stable", "1")
        }
        for promql in _dashboard_queries():
            prometheus.api("query", query=promql)
        # The one-hour windows need grasps Prometheus saw happen: let the arms go on.
        for stub in stubs:
            stub.Resume(robot_agent_pb2.ResumeRequest())
        deadline = time.monotonic() + 60
        while not _query(prometheus, "graspfleet:model_grasp_success:ratio_1h"):
            assert time.monotonic() < deadline, "no one-hour success rate recorded"
            time.sleep(1.0)
        for c in channels:
            c.close()
    finally:
        if prometheus is not None:
            prometheus.stop()
        for agent in agents:
            agent.stop()
        if planner is not None:
            planner.stop(grace_s=0)
        predictor.stop()
        store.stop()
