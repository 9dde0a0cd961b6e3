"""The import contract of `make lint` (pyproject's [tool.importlinter]) holds, and catches a wrong-way import."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "robots", "models", "experiments", "bench")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the code and its contract, to plant imports in."""
    tree = tmp_path_factory.mktemp("tree")
    shutil.copy(ROOT / "pyproject.toml", tree)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return tree


def plant(tree: Path, module: str, line: str) -> str:
    path = tree / (module.replace(".", "/") + ".py")
    original = path.read_text()
    path.write_text(original + f"\n{line}\n")
    return original


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # A library reaching into a service.
        ("models.registry", "from services.grasp_predictor import server", "models"),
        # The common runtime reaching up into the robots.
        ("services.common.files", "import robots.world", "services.common"),
        # One service importing another's internals instead of its client.
        ("services.sim_farm.worker", "from services.robot_agent import agent", "sim_farm"),
        # A service reaching up into the local fleet.
        ("services.trainer.job.gate", "from services.fleet import run", "services.trainer"),
    ],
)
def test_a_wrong_way_import_breaks_the_contract(tree, module, line, broken):
    original = plant(tree, module, line)
    try:
        result = lint_imports(tree)
    finally:
        (tree / (module.replace(".", "/") + ".py")).write_text(original)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and broken in result.stdout


def test_the_tree_keeps_the_contract_and_a_client_import_is_allowed(tree):
    assert lint_imports(tree).returncode == 0
    original = plant(tree, "services.trainer.job.gate", "from services.sim_farm import client")
    try:
        result = lint_imports(tree)
    finally:
        (tree / "services/trainer/job/gate.py").write_text(original)
    assert result.returncode == 0, result.stdout


def imports(tree: Path) -> dict[str, set[str]]:
    """Each module of PACKAGES and the modules of PACKAGES it imports, at the top or inside a
    function (a lazy import is still a dependency)."""
    modules = {}
    for package in PACKAGES:
        for path in (tree / package).rglob("*.py"):
            name = ".".join(path.relative_to(tree).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    found = {}
    for name, path in modules.items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        found[name] = {n for n in names if n in modules and n != name}
    return found


def mutual_imports(tree: Path) -> list[tuple[str, str]]:
    """Pairs of modules that import each other."""
    found = imports(tree)
    return sorted(
        (a, b) for a, targets in found.items() for b in targets if a < b and a in found[b]
    )


def test_no_two_modules_import_each_other(tree):
    assert mutual_imports(tree) == []
    # The check sees a cycle closed by a lazy import.
    original = plant(
        tree, "services.sim_farm.plan", "def _late():\n    from services.sim_farm import collector"
    )
    try:
        assert mutual_imports(tree) == [("services.sim_farm.collector", "services.sim_farm.plan")]
    finally:
        (tree / "services/sim_farm/plan.py").write_text(original)
