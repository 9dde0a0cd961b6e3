"""A versioned model repository: polls `<base>/<name>/<version>/`, loads, warms up, switches.

The same machinery serves the grasp predictor and the refiner. A version is
served only after it loaded and passed the service's warm-up check; a version
that fails is reported (GetModelStatus) and the versions already serving keep
serving. Only folders named by an integer are versions: exporters write into a
temporary folder and rename it in one step, and a folder whose files changed in
the last `settle_s` seconds is left for the next poll, so a half-copied folder
is never loaded.

Labels ("stable", "canary") come from `<base>/<name>/labels.json`, e.g.
`{"stable": 3, "canary": 4}`, which the trainer rewrites atomically. Without
that file, "stable" means the newest loaded version.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.registry import DEFAULT_LABEL, METADATA_FILE, read_labels, versions
from services.common import logs
from services.common.errors import NotFound

log = logs.get_logger(__name__)


class VersionState:
    """Lifecycle of a version, as in TF Serving's ModelVersionStatus.State."""

    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass
class LoadedModel:
    """One version that passed its warm-up and is ready to serve."""

    name: str
    version: int
    path: Path
    module: Any
    signatures: dict[str, Any]
    metadata: dict[str, Any]
    loaded_at: float = field(default_factory=time.time)
    # Per-version resources (a request batcher) the service attaches and closes.
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionStatus:
    """One version's TF Serving-style state (LOADING, AVAILABLE or END) and why it failed."""

    version: int
    state: str
    error: str = ""


def _fingerprint(folder: Path) -> tuple[float, tuple]:
    """(newest modification time, every file's path, size and mtime) of a version folder."""
    files = tuple(
        sorted(
            (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime)
            for p in folder.rglob("*")
        )
    )
    newest = max((f[2] for f in files), default=folder.stat().st_mtime)
    return newest, files


def _load_saved_model(path: Path) -> tuple[Any, dict[str, Any]]:
    import tensorflow as tf

    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{path} has no saved_model.pb")
    module = tf.saved_model.load(str(path))
    return module, dict(module.signatures)


class ModelRepository:
    """Keeps the wanted versions of one model loaded and resolves requests to them.

    Args:
        base_path: The model base path; versions live in `base_path/name/<int>/`.
        name: Model name.
        warm_up: Runs a loaded version on representative input and raises if its
            outputs are wrong; a version that raises is never served.
        specific_versions: Serve exactly these versions; empty means the newest
            version plus every labelled one.
        settle_s: A folder modified more recently than this is not loaded yet.
        on_change: Called with the repository after the served set changed.
    """

    def __init__(
        self,
        base_path: Path,
        name: str,
        warm_up: Callable[[LoadedModel], None],
        *,
        specific_versions: tuple[int, ...] = (),
        settle_s: float = 1.0,
        on_change: Callable[[ModelRepository], None] | None = None,
        on_unload: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.base_path = Path(base_path)
        self.name = name
        self.warm_up = warm_up
        self.specific_versions = tuple(specific_versions)
        self.settle_s = settle_s
        self.on_change = on_change
        self.on_unload = on_unload
        self._lock = threading.RLock()
        self._loaded: dict[int, LoadedModel] = {}
        self._status: dict[int, VersionStatus] = {}
        self._failed: dict[int, tuple] = {}
        self._labels: dict[str, int] = {}
        self._labels_from_file = False

    @property
    def folder(self) -> Path:
        """The model's folder under the base path, holding one folder per version."""
        return self.base_path / self.name

    def available_versions(self) -> list[int]:
        """Integer-named version folders on disk, oldest first."""
        return versions(self.folder)

    def _read_labels(self) -> dict[str, int]:
        try:
            labels = read_labels(self.folder)
        except ValueError as err:
            # Serving goes on with the labels last read; the trainer refuses the file.
            log.error("ignoring unreadable labels file", extra={"error": str(err)})
            return self._labels
        self._labels_from_file = labels is not None
        return labels or {}

    def poll(self) -> bool:
        """One pass: load new versions, unload unwanted ones. Returns True if anything changed.

        Serves every labelled version plus the newest version that loads and
        passes its warm-up (or exactly `specific_versions`). A newer version
        that fails leaves the older one serving.
        """
        on_disk = self.available_versions()
        labels = self._read_labels()
        statuses_before = dict(self._status)
        if self.specific_versions:
            keep = set(self.specific_versions) & set(on_disk)
            for version in keep:
                self._ensure_loaded(version)
        else:
            keep = set(labels.values()) & set(on_disk)
            for version in keep:
                self._ensure_loaded(version)
            for version in reversed(on_disk):  # the newest version that serves
                if self._ensure_loaded(version):
                    keep.add(version)
                    break
        # Labels move only once their versions serve: until then a moved label keeps
        # answering with the version it had, so an arm asking for it is never refused.
        with self._lock:
            effective = {}
            for label, version in labels.items():
                before = self._labels.get(label)
                if version not in self._loaded and before in self._loaded:
                    effective[label] = before
                    keep.add(before)
                else:
                    effective[label] = version
            changed = effective != self._labels
            self._labels = effective
        for version in set(self._loaded) - keep:
            self._unload(version)
        for version in list(self._status):
            if version not in on_disk and version not in self._loaded:
                self._status.pop(version)
        changed |= self._status != statuses_before
        if changed and self.on_change is not None:
            self.on_change(self)
        return changed

    def _ensure_loaded(self, version: int) -> bool:
        """True when `version` is serving, loading it first if needed."""
        return version in self._loaded or self._try_load(version)

    def _try_load(self, version: int) -> bool:
        """Loads and warms up `version`; True if it now serves."""
        path = self.folder / str(version)
        try:
            newest, files = _fingerprint(path)
        except FileNotFoundError:
            return False
        if time.time() - newest < self.settle_s:
            return False  # still being written; look again on the next poll
        if self._failed.get(version) == files:
            return False  # failed before and unchanged since
        self._status[version] = VersionStatus(version, VersionState.LOADING)
        started = time.monotonic()
        try:
            module, signatures = _load_saved_model(path)
            metadata_path = path / METADATA_FILE
            metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
            loaded = LoadedModel(self.name, version, path, module, signatures, metadata)
            self.warm_up(loaded)
        except Exception as err:  # noqa: BLE001 - any failure keeps the version out of service
            self._failed[version] = files
            self._status[version] = VersionStatus(
                version, VersionState.END, f"{type(err).__name__}: {err}"
            )
            log.error(
                "model version refused",
                extra={
                    "model": self.name,
                    "version": version,
                    "error": f"{type(err).__name__}: {err}",
                },
            )
            return False
        with self._lock:
            self._loaded[version] = loaded
            self._status[version] = VersionStatus(version, VersionState.AVAILABLE)
        self._failed.pop(version, None)
        log.info(
            "model version serving",
            extra={
                "model": self.name,
                "version": version,
                "load_s": round(time.monotonic() - started, 2),
            },
        )
        return True

    def _unload(self, version: int) -> None:
        with self._lock:
            loaded = self._loaded.pop(version)
            self._status[version] = VersionStatus(version, VersionState.END)
        if self.on_unload is not None:
            self.on_unload(loaded)
        log.info("model version unloaded", extra={"model": self.name, "version": version})

    def loaded(self) -> list[LoadedModel]:
        """The versions serving now, oldest first."""
        with self._lock:
            return [self._loaded[v] for v in sorted(self._loaded)]

    def labels(self) -> dict[str, int]:
        """Label → version, with the default "stable" when no labels file exists."""
        with self._lock:
            labels = dict(self._labels)
            if not self._labels_from_file and self._loaded:
                labels.setdefault(DEFAULT_LABEL, max(self._loaded))
            return labels

    def resolve(self, version: int | None = None, label: str | None = None) -> LoadedModel:
        """The loaded version a request names: a number, a label, or (neither) the newest.

        Raises:
            NotFound: no such version is loaded, or the label is not assigned.
        """
        with self._lock:
            if version:
                if version not in self._loaded:
                    served = sorted(self._loaded) or "none"
                    raise NotFound(
                        f"model {self.name!r} version {version} is not being served (serving: {served})"
                    )
                return self._loaded[version]
            if label:
                labels = self.labels()
                if label not in labels:
                    raise NotFound(
                        f"model {self.name!r} has no version labelled {label!r} (labels: {sorted(labels) or 'none'})"
                    )
                if labels[label] not in self._loaded:
                    raise NotFound(
                        f"model {self.name!r} label {label!r} points to version {labels[label]}, which is not loaded"
                    )
                return self._loaded[labels[label]]
            if not self._loaded:
                raise NotFound(f"model {self.name!r} has no version loaded yet")
            return self._loaded[max(self._loaded)]

    def statuses(self) -> list[VersionStatus]:
        """The state of every version seen, oldest first."""
        with self._lock:
            return [self._status[v] for v in sorted(self._status)]


class RepositoryPoller:
    """Polls a set of repositories on a background thread until stopped."""

    def __init__(self, repositories: list[ModelRepository], interval_s: float) -> None:
        self.repositories = repositories
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)

    def start(self) -> None:
        """Starts polling on the background thread."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for repository in self.repositories:
                try:
                    repository.poll()
                except Exception:  # noqa: BLE001 - the poller must outlive one bad poll
                    log.exception("model poll failed", extra={"model": repository.name})

    def stop(self) -> None:
        """Stops polling and waits (up to 10 s) for the thread to end."""
        self._stop.set()
        self._thread.join(timeout=10)
