"""The model registry: published versions, their labels, and each label's history.

Versions are the integer folders the predictor serves from; their facts come
from the metadata the export wrote beside them. Labels live in
`<model_base>/<name>/labels.json`, which the predictor re-reads every poll;
every change is appended to `labels_history.jsonl` beside it (who, when, why),
and a rollback replays that history to find the version that held the label
before. Both files are rewritten atomically under a lock file, so two writers
never interleave.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from graspfleet.v1 import common_pb2, trainer_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.files import fsync_dir, fsync_tree, write_atomically
from services.common.names import check_name, inside

# The layout of a model base, `<model_base>/<name>/<integer version>/`:
FORMAT_VERSION = 1  # of the metadata below; readers refuse a newer one
METADATA_FILE = "graspfleet_model.json"  # beside each version's SavedModel
# A grasp-success version's training weights (models/grasp_success/export.py), beside it.
TRAINING_WEIGHTS_FILE = "assets.extra/grasp_success.weights.h5"
STAGING_PREFIX = ".tmp-"  # a version being written; not an integer, so no reader loads it
LABELS_FILE = "labels.json"  # label -> version, re-read by the servers every poll
HISTORY_FILE = "labels_history.jsonl"
LOCK_FILE = ".labels.lock"
STABLE = "stable"  # the label arms grasp with unless told otherwise
DEFAULT_LABEL = STABLE
CANARY = "canary"
# The syntax of a label, shared with the robot-agent pods' node label graspfleet.io/model-label.
LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def versions(model_dir: str | Path) -> list[int]:
    """The published versions under `<model_base>/<name>/`, ascending; [] if none.

    The one reading of the layout's version folders: integer names only, so a
    staging folder (`.tmp-<uuid>`) is never taken for a version.
    """
    path = Path(model_dir)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir())


def read_labels(model_dir: str | Path) -> dict[str, int] | None:
    """The label -> version map of `<model_dir>/labels.json`; None when there is no file.

    What a reader does with a broken file is its own call: the trainer refuses to
    move labels over it, the predictor keeps serving the labels it last read.

    Raises:
        ValueError: the file is not a JSON object of label -> integer version.
    """
    path = Path(model_dir) / LABELS_FILE
    if not path.is_file():
        return None
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a JSON object of label -> version ({err})") from None


def publish_staged(model_dir: Path, write: Callable[[Path], None]) -> int:
    """Publishes a new version of `model_dir` atomically; returns its number.

    `write(staging)` fills a fresh staging folder (a name no reader loads); the
    folder is fsynced and renamed to the next free integer in one step.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        write(staging)
        fsync_tree(staging)
        while True:
            version = max(versions(model_dir), default=0) + 1
            try:
                # A directory rename fails on a non-empty target: a concurrent
                # exporter that took this number first makes us take the next one.
                os.rename(staging, model_dir / str(version))
                break
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        fsync_dir(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def read_metadata(path: str | Path) -> dict:
    """The `graspfleet_model.json` of a version folder.

    Raises:
        FileNotFoundError: the folder holds no metadata (not a graspfleet export).
        ValueError: the metadata is of a newer format than this code reads.
    """
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: {path} is not a graspfleet model version")
    metadata = json.loads(file.read_text())
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{file} has format_version {metadata['format_version']}; "
            f"this code reads up to {FORMAT_VERSION}"
        )
    return metadata


def image_size(metadata: dict, default: int) -> tuple[int, int]:
    """(height, width) of the images a version was trained on, from its metadata."""
    size = metadata.get("image_size")
    if isinstance(size, dict):
        return int(size["height"]), int(size["width"])
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    return default, default


def _recipe(name: str) -> int:
    """The Recipe value recorded in a version's metadata; unspecified when unknown."""
    try:
        return trainer_pb2.Recipe.Value(name)
    except ValueError:
        return trainer_pb2.RECIPE_UNSPECIFIED


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class Registry:
    """Versions and labels of every model under one model base.

    Args:
        model_base: The model repository root.
    """

    def __init__(self, model_base: Path) -> None:
        self.model_base = Path(model_base)
        self._lock = threading.Lock()

    def folder(self, name: str) -> Path:
        """The folder of model `name`; a name that could leave the model base is refused.

        Raises:
            InvalidArgument: `name` breaks `names.check_name`'s rule.
        """
        return inside(self.model_base, check_name("model name", name))

    def model_names(self) -> list[str]:
        """Models that have a folder under the base."""
        if not self.model_base.is_dir():
            return []
        return sorted(p.name for p in self.model_base.iterdir() if p.is_dir())

    def version_numbers(self, name: str) -> list[int]:
        """The version numbers of model `name` on disk, oldest first."""
        return versions(self.folder(name))

    def labels(self, name: str) -> dict[str, int]:
        """Label -> version as the predictor sees them (no file: "stable" is the newest)."""
        try:
            labels = read_labels(self.folder(name))
        except ValueError as err:
            raise FailedPrecondition(f"{err}; fix it by hand") from None
        if labels is not None:
            return labels
        numbers = self.version_numbers(name)
        return {STABLE: numbers[-1]} if numbers else {}

    def versions(self, name: str) -> list[trainer_pb2.ModelVersion]:
        """Every published version of `name`, oldest first."""
        labels = self.labels(name)
        return [self._describe(name, v, labels) for v in self.version_numbers(name)]

    def version(self, name: str, version: int) -> trainer_pb2.ModelVersion:
        """Version `version` of model `name` with its labels and metadata.

        Raises:
            NotFound: the model has no such version.
        """
        if version not in self.version_numbers(name):
            raise NotFound(f"model {name!r} has no version {version}")
        return self._describe(name, version, self.labels(name))

    def _describe(self, name: str, version: int, labels: dict) -> trainer_pb2.ModelVersion:
        folder = self.folder(name) / str(version)
        try:
            metadata = json.loads((folder / METADATA_FILE).read_text())
        except (FileNotFoundError, ValueError):
            metadata = {}  # exported by hand: still a version, with nothing known about it
        trainer = metadata.get("trainer", {})
        described = trainer_pb2.ModelVersion(
            name=name,
            version=version,
            labels=sorted(label for label, v in labels.items() if v == version),
            run_id=trainer.get("run_id", ""),
            recipe=_recipe(trainer.get("recipe", "")),
            path=f"{name}/{version}",
        )
        for key, value in metadata.get("validation_metrics", {}).items():
            described.metrics[f"validation_{key}"] = float(value)
        for key, value in trainer.get("gate", {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                described.metrics[f"gate_{key}"] = float(value)
        size = metadata.get("image_size", {})
        if isinstance(size, dict):
            described.image_size.CopyFrom(
                common_pb2.ImageSize(width=size.get("width", 0), height=size.get("height", 0))
            )
        if "created_at" in metadata:
            described.created_at.FromDatetime(
                datetime.datetime.fromisoformat(metadata["created_at"])
            )
        return described

    @contextlib.contextmanager
    def _locked(self, name: str, create: bool = False) -> Iterator[Path]:
        folder = self.folder(name)
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise NotFound(f"no model {name!r} under the model base")
        with self._lock, open(folder / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def history(self, name: str) -> list[dict]:
        """Every recorded label change of `name`, oldest first."""
        path = self.folder(name) / HISTORY_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def has_held(self, name: str, label: str, version: int) -> bool:
        """Whether `label` was ever moved to `version`, by hand or automatically.

        A freeze, which only records the implicit "stable = newest", does not count.
        """
        return any(
            e["label"] == label and e["version"] == version and e["action"] != "freeze"
            for e in self.history(name)
        )

    def _write(self, folder: Path, labels: dict[str, int], entry: dict) -> None:
        with open(folder / HISTORY_FILE, "a") as history:
            history.write(json.dumps({"time": _now(), **entry}, sort_keys=True) + "\n")
            history.flush()
            os.fsync(history.fileno())
        write_atomically(folder / LABELS_FILE, json.dumps(labels, sort_keys=True))

    def freeze(self, name: str) -> None:
        """Writes labels.json if it is missing.

        A newly exported version is then not taken for "stable" by the predictor's
        newest-version default.
        """
        with self._locked(name, create=True) as folder:
            self._freeze(name, folder, "trainer", "first trainer publication")

    def _freeze(self, name: str, folder: Path, by: str, reason: str) -> None:
        """Under the lock: pins the implicit "stable = newest" in labels.json, if missing."""
        if (folder / LABELS_FILE).is_file():
            return
        labels = self.labels(name)
        entry = {"action": "freeze", "by": by, "reason": reason}
        self._write(folder, labels, {**entry, "label": STABLE, "version": labels.get(STABLE)})

    def set_label(
        self, name: str, version: int, label: str, *, by: str, reason: str = ""
    ) -> trainer_pb2.ModelVersion:
        """Moves `label` to `version` (it leaves the version that had it).

        Raises:
            InvalidArgument: a malformed label.
            NotFound: no such version.
        """
        if not LABEL.match(label):
            raise InvalidArgument(
                f"label {label!r}: use 1-32 of [a-z0-9_-], starting with a letter"
            )
        with self._locked(name) as folder:
            if version not in self.version_numbers(name):
                raise NotFound(f"model {name!r} has no version {version}")
            # Pinned first: otherwise "stable" would follow the newest version once
            # another is published, unrecorded, while this label stays put.
            self._freeze(name, folder, by, "the first label set")
            labels = self.labels(name)
            previous = labels.get(label)
            if previous != version:
                labels[label] = version
                entry = {"action": "set", "label": label, "version": version}
                self._write(
                    folder, labels, {**entry, "previous": previous, "by": by, "reason": reason}
                )
        return self.version(name, version)

    def rollback(
        self, name: str, label: str, *, by: str, reason: str = ""
    ) -> trainer_pb2.ModelVersion:
        """Moves `label` back to the version that held it before the current one.

        Repeated rollbacks walk further back through the label's history.

        Raises:
            NotFound: the label is not assigned.
            FailedPrecondition: no earlier version held it, or that version is gone.
        """
        with self._locked(name) as folder:
            labels = self.labels(name)
            if label not in labels:
                raise NotFound(f"model {name!r} has no label {label!r} (labels: {sorted(labels)})")
            held = []  # the versions the label went through, as a stack
            for entry in self.history(name):
                if entry["label"] != label or entry.get("version") is None:
                    continue
                if entry["action"] == "freeze":
                    continue  # a record of the implicit label, not a move to walk back through
                if entry["action"] == "rollback" and held and held[-1] == entry.get("previous"):
                    held.pop()
                if not held or held[-1] != entry["version"]:
                    held.append(entry["version"])
            if not held or held[-1] != labels[label]:
                held.append(labels[label])  # labels.json was edited by hand
            current = held.pop()
            if not held:
                raise FailedPrecondition(
                    f"label {label!r} of model {name!r} has had no version before {current}"
                )
            target = held[-1]
            if target not in self.version_numbers(name):
                raise FailedPrecondition(
                    f"label {label!r} was on version {target} before {current}, and that "
                    "version is no longer in the repository"
                )
            labels[label] = target
            entry = {"action": "rollback", "label": label, "version": target}
            self._write(folder, labels, {**entry, "previous": current, "by": by, "reason": reason})
        return self.version(name, target)
