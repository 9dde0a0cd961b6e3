"""A label moved to another version answers with the version it had until the new one serves."""

from __future__ import annotations

import threading

from models.registry import Registry
from models.repository import ModelRepository, VersionState
from services.common.errors import NotFound
from tests.fixtures import models

NAME = "grasp_success"


def _repository(root) -> ModelRepository:
    return ModelRepository(root, NAME, warm_up=lambda model: None, settle_s=0)


def test_a_label_moved_to_a_version_not_yet_loaded_never_goes_unanswered(tmp_path):
    for version in (1, 2, 3):
        models.publish(tmp_path, version, bias=0.0)
    registry = Registry(tmp_path)
    registry.set_label(NAME, 3, "stable", by="test")
    registry.set_label(NAME, 3, "canary", by="test")
    repository = _repository(tmp_path)
    repository.poll()
    assert [m.version for m in repository.loaded()] == [3]
    registry.set_label(NAME, 1, "canary", by="test", reason="a rollback to an unloaded version")

    refused, answered = [], []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            try:
                answered.append(repository.resolve(label="canary").version)
            except NotFound as err:
                refused.append(str(err))

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        repository.poll()  # loads version 1 while the arm keeps asking
    finally:
        stop.set()
        asker.join()
    assert not refused, refused[:1]
    assert answered and set(answered) <= {3, 1}
    assert repository.resolve(label="canary").version == 1
    assert repository.labels() == {"stable": 3, "canary": 1}


def test_a_label_moved_to_a_broken_version_keeps_the_one_it_had(tmp_path):
    models.publish(tmp_path, 1, bias=0.0)
    models.publish_corrupt(tmp_path, 2)
    registry = Registry(tmp_path)
    registry.set_label(NAME, 1, "stable", by="test")
    repository = _repository(tmp_path)
    repository.poll()
    registry.set_label(NAME, 2, "stable", by="test", reason="a version that does not load")
    repository.poll()
    assert repository.resolve(label="stable").version == 1
    statuses = {s.version: s for s in repository.statuses()}
    assert statuses[1].state == VersionState.AVAILABLE
    assert statuses[2].state == VersionState.END and statuses[2].error
    # A label that never pointed anywhere loaded still says why it cannot answer.
    registry.set_label(NAME, 2, "canary", by="test")
    repository.poll()
    try:
        repository.resolve(label="canary")
    except NotFound as err:
        assert "points to version 2, which is not loaded" in str(err)
    else:
        raise AssertionError("a label on a version that never loaded answered")
