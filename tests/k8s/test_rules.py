"""The Prometheus rules and the dashboard: promtool checks and unit tests, coverage, real metric names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s import prometheus_rules as rules

ROOT = rules.ROOT
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="needs Debian's prometheus (make sysdeps)")


def _metric_names_in_code() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "services").rglob("*.py"))


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(tmp_path):
    path = rules.write_rule_file(tmp_path)
    result = _promtool("check", "rules", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules.rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(tmp_path):
    rules.write_rule_file(tmp_path)
    tests = sorted(rules.PROMTOOL_TESTS.glob("*.test.yaml"))
    assert tests
    for test in tests:
        shutil.copy(test, tmp_path)
    result = _promtool("test", "rules", *(t.name for t in tests), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_can_fail(tmp_path):
    """A rule that drifts from its test is caught: halve the canary threshold and the tests break."""
    path = rules.write_rule_file(tmp_path)
    path.write_text(path.read_text().replace("- 0.05", "- 0.5"))
    for test in rules.PROMTOOL_TESTS.glob("*.test.yaml"):
        shutil.copy(test, tmp_path)
    result = _promtool("test", "rules", "graspfleet.rules.test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "GraspfleetCanaryBelowStable" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet():
    cases: dict[str, set[bool]] = {}
    for test in rules.PROMTOOL_TESTS.glob("*.test.yaml"):
        for group in yaml.safe_load(test.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    for alert in rules.alert_names():
        assert cases.get(alert) == {True, False}, f"{alert}: needs a firing and a quiet test"
    assert set(cases) <= set(rules.alert_names())


def test_every_alert_has_a_runbook():
    operations = (ROOT / "docs" / "operations.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", operations, re.M)
    }
    for rule in rules.rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in ("warning", "critical")
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/operations.md" and anchor in headings, runbook


def test_rules_and_dashboard_read_series_that_exist():
    """Every series is a metric a service declares or a series a rule records."""
    code = _metric_names_in_code()
    recorded = rules.recorded_names()
    dashboard = json.loads(rules.DASHBOARD.read_text())
    exprs = [r["expr"] for r in rules.rules()]
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    for expr in exprs:
        for name in rules.series_names(expr):
            if name in recorded:
                continue
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert f'"{base}"' in code, f"{name} (in {expr!r}) is not a metric of any service"


# Series the alerts read from other exporters than the services, by exporter; the
# prometheus-operator README lists them as what the rules need besides the services.
EXTERNAL_SERIES = {
    "up": "Prometheus",
    "kubelet_volume_stats_available_bytes": "kubelet",
    "kubelet_volume_stats_capacity_bytes": "kubelet",
    "kube_statefulset_status_replicas_ready": "kube-state-metrics",
    "kube_job_status_failed": "kube-state-metrics",
    "certmanager_certificate_expiration_timestamp_seconds": "cert-manager",
}


def test_rules_read_other_exporters_only_as_the_readme_says():
    """A series selected in a rule (`name{...}`) that is no service's is one of
    EXTERNAL_SERIES, named in the component's README with its exporter."""
    selected = set()
    for rule in rules.rules():
        selected |= set(re.findall(r"\b([a-z_:][a-z0-9_:]*)\{", rule["expr"]))
    others = {n for n in selected if not re.match(r"(graspfleet|grpc_server)", n)}
    assert others == set(EXTERNAL_SERIES)
    readme = (rules.COMPONENT / "README.md").read_text()
    for name, exporter in EXTERNAL_SERIES.items():
        assert f"`{name}`" in readme and exporter in readme, name


def test_recording_rules_follow_the_naming_convention():
    for name in rules.recorded_names():
        assert re.fullmatch(r"graspfleet:[a-z0-9_]+:[a-z0-9_]+", name), name
