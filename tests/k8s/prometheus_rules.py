"""The fleet's Prometheus rules as a plain rule file, taken from the one PrometheusRule that holds them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "k8s" / "components" / "prometheus-operator"
RULES_SOURCE = COMPONENT / "prometheusrule.yaml"
DASHBOARD = COMPONENT / "dashboards" / "graspfleet.json"
RULE_FILE_NAME = "graspfleet.rules.yaml"
PROMTOOL_TESTS = Path(__file__).parent / "promtool"

# A metric or recorded series name in a PromQL expression (not a function or label).
_NAME = re.compile(r"\b((?:graspfleet|grpc_server)[a-z0-9_:]*)\b")


def rule_groups() -> list[dict]:
    """spec.groups of the PrometheusRule: what Prometheus evaluates."""
    return yaml.safe_load(RULES_SOURCE.read_text())["spec"]["groups"]


def write_rule_file(folder: Path) -> Path:
    """Writes the groups as a plain Prometheus rule file into `folder`; returns its path."""
    path = Path(folder) / RULE_FILE_NAME
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def rules() -> list[dict]:
    """Every rule of every group, in order."""
    return [rule for group in rule_groups() for rule in group["rules"]]


def alert_names() -> list[str]:
    return [r["alert"] for r in rules() if "alert" in r]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def series_names(expr: str) -> set[str]:
    """The graspfleet and gRPC series an expression reads (metrics or recorded series)."""
    return set(_NAME.findall(expr))
