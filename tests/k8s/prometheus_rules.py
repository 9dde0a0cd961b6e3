"""The fleet's Prometheus rules as a plain rule file, taken from the one PrometheusRule that holds them."""

from __future__ import annotations

import re
from pathlib import Path

from services.fleet.prometheus import (
    ROOT,
    RULE_FILE_NAME,
    RULES_SOURCE,
    rule_groups,
    write_rule_file,
)

COMPONENT = RULES_SOURCE.parent
DASHBOARD = COMPONENT / "dashboards" / "graspfleet.json"
__all__ = ["ROOT", "RULE_FILE_NAME", "RULES_SOURCE", "rule_groups", "write_rule_file"]
PROMTOOL_TESTS = Path(__file__).parent / "promtool"

# A metric or recorded series name in a PromQL expression (not a function or label).
_NAME = re.compile(r"\b((?:graspfleet|grpc_server)[a-z0-9_:]*)\b")


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
