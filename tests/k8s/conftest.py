"""Builds of every k8s/ combination, shared by the manifest tests of one run."""

from __future__ import annotations

import fcntl
import pickle

import pytest

from tests.k8s import kustomize


@pytest.fixture(scope="session")
def built(tmp_path_factory, request) -> dict[kustomize.Combination, list[dict]]:
    """Every overlay × component combination (and k8s/ itself) as built objects.

    Built once per test run: with pytest-xdist, the first worker to need them builds
    them and the others read its result from the run's shared temporary folder
    (without pytest-xdist, or with `-p no:xdist`, this process builds them).
    """
    if not hasattr(request.config, "workerinput"):
        return kustomize.build_all()
    shared = tmp_path_factory.getbasetemp().parent / "k8s-built.pickle"
    with open(shared.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if shared.exists():
            return pickle.loads(shared.read_bytes())
        objects = kustomize.build_all()
        shared.write_bytes(pickle.dumps(objects))
        return objects
