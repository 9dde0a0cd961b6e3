"""The model registry: version folders, labels and their history, rollbacks, refusals."""

from __future__ import annotations

import json

import pytest

from models.registry import HISTORY_FILE, LABELS_FILE, Registry
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound

NAME = "grasp_success"


@pytest.fixture
def registry(tmp_path):
    for folder in ("1", "2", "3", ".tmp-abc", "notes"):
        (tmp_path / NAME / folder).mkdir(parents=True)
    return Registry(tmp_path)


def test_versions_are_integer_folders_and_stable_defaults_to_the_newest(registry, tmp_path):
    assert registry.version_numbers(NAME) == [1, 2, 3]
    assert registry.labels(NAME) == {"stable": 3}  # the predictor's rule without labels.json
    registry.freeze(NAME)
    assert json.loads((tmp_path / NAME / LABELS_FILE).read_text()) == {"stable": 3}
    assert [v.labels for v in registry.versions(NAME)] == [[], [], ["stable"]]
    assert registry.versions(NAME)[0].path == f"{NAME}/1"


def test_the_first_label_set_pins_stable_before_a_newer_version_arrives(tmp_path):
    (tmp_path / NAME / "1").mkdir(parents=True)
    registry = Registry(tmp_path)
    registry.set_label(NAME, 1, "stable", by="ana")  # already the implicit stable
    (tmp_path / NAME / "2").mkdir()
    registry.set_label(NAME, 2, "canary", by="ana")
    # Without the pin, "stable" would have followed the newest version, unrecorded.
    assert registry.labels(NAME) == {"stable": 1, "canary": 2}
    assert registry.history(NAME)[0]["action"] == "freeze"


def test_labels_move_and_roll_back_through_their_history(registry, tmp_path):
    for version in (1, 2, 3):
        registry.set_label(NAME, version, "stable", by="ana")
    registry.set_label(NAME, 3, "canary", by="ana")
    assert registry.labels(NAME) == {"stable": 3, "canary": 3}
    assert registry.rollback(NAME, "stable", by="ana").version == 2
    assert registry.rollback(NAME, "stable", by="ana").version == 1
    with pytest.raises(FailedPrecondition, match="no version before 1"):
        registry.rollback(NAME, "stable", by="ana")
    registry.set_label(NAME, 3, "stable", by="bo")
    assert registry.rollback(NAME, "stable", by="bo").version == 1
    assert registry.labels(NAME) == {"stable": 1, "canary": 3}
    history = [
        json.loads(line) for line in (tmp_path / NAME / HISTORY_FILE).read_text().splitlines()
    ]
    assert [(e["action"], e["version"], e["previous"]) for e in history[-2:]] == [
        ("set", 3, 1),
        ("rollback", 1, 3),
    ]
    assert registry.has_held(NAME, "stable", 3) and not registry.has_held(NAME, "canary", 1)
    assert not list((tmp_path / NAME).glob(".*.tmp"))


def test_rollback_after_a_hand_edit_and_to_a_deleted_version(registry, tmp_path):
    registry.set_label(NAME, 1, "stable", by="ana")
    (tmp_path / NAME / LABELS_FILE).write_text(json.dumps({"stable": 3}))  # edited by hand
    assert registry.rollback(NAME, "stable", by="ana").version == 1
    registry.set_label(NAME, 2, "stable", by="ana")
    (tmp_path / NAME / "1").rmdir()
    with pytest.raises(FailedPrecondition, match="no longer in the repository"):
        registry.rollback(NAME, "stable", by="ana")


def test_bad_labels_versions_and_models_are_refused(registry):
    with pytest.raises(InvalidArgument):
        registry.set_label(NAME, 1, "Stable!", by="ana")
    with pytest.raises(NotFound):
        registry.set_label(NAME, 9, "stable", by="ana")
    with pytest.raises(NotFound):
        registry.set_label("no_such_model", 1, "stable", by="ana")
    with pytest.raises(NotFound):
        registry.rollback(NAME, "canary", by="ana")
