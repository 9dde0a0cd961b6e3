"""The trainer's split: the service side never loads TensorFlow; the job side (`job/`) does."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import services.trainer

PACKAGE = "services.trainer"
JOB = f"{PACKAGE}.job"
# The run folder's contract, written by the trainer and read by the job: shared by both sides.
SHARED = (JOB, f"{JOB}.inputs", f"{JOB}.files")
# `graspfleet train job` starts the job from the CLI, importing it only when that command runs.
ENTRY = ("services.trainer.cli", f"{JOB}.main")
ROOT = Path(services.trainer.__file__).parent
REPO = ROOT.parent.parent

# Imports the modules named on the command line in order and prints the first one after
# which TensorFlow is loaded, if any.
PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    if "tensorflow" in sys.modules:
        print(name)
        break
"""


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(ROOT)], prefix=f"{PACKAGE}."))


def _service_side() -> list[str]:
    job_side = [m for m in _modules() if m == JOB or m.startswith(f"{JOB}.")]
    return [PACKAGE, *(m for m in _modules() if m not in job_side), *SHARED]


def _first_to_load_tensorflow(modules: list[str]) -> str:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return probe.stdout.strip()


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_service_side_imports_without_tensorflow():
    modules = _service_side()
    assert f"{PACKAGE}.server" in modules and f"{JOB}.gate" not in modules
    culprit = _first_to_load_tensorflow(modules)
    assert not culprit, (
        f"importing {culprit} loads TensorFlow: the trainer's service side must not; move the "
        f"code that needs it to {JOB} or import it inside the function that uses it"
    )


def test_the_job_side_is_where_tensorflow_is_imported():
    assert _first_to_load_tensorflow([f"{JOB}.main"]) == f"{JOB}.main"
    importers = {
        _module_name(path)
        for path in ROOT.rglob("*.py")
        if any(m == "tensorflow" or m.startswith("tensorflow.") for m in _imports(path))
    }
    assert importers, "no module of the trainer imports TensorFlow: the job side should"
    assert all(m.startswith(f"{JOB}.") for m in importers), sorted(importers)


def test_the_service_side_reaches_into_the_job_only_for_the_run_folder():
    job_side = {m for m in _modules() if m.startswith(f"{JOB}.") and m not in SHARED}
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        if module in job_side:
            continue
        reached = {m for m in _imports(path) & job_side if (module, m) != ENTRY}
        assert not reached, f"{module} imports {sorted(reached)} from the job side"
