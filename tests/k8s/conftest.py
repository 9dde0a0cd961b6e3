"""Builds of every k8s/ combination, shared by the manifest tests of one run."""

from __future__ import annotations

import pytest

from tests.k8s import kustomize


@pytest.fixture(scope="session")
def built() -> dict[kustomize.Combination, list[dict]]:
    """Every overlay × component combination (and k8s/ itself) as built objects."""
    return kustomize.build_all()
