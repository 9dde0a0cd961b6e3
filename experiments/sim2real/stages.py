"""Cached stages: a stage's result is kept under the root, keyed by its name and settings.

A stage that finished is never run again for the same settings; one that was
stopped halfway runs again (and the work it delegates, collections and
evaluations, resumes from what the stores already hold).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from experiments.sim2real.protocol import PROTOCOL_VERSION


def key(settings: dict) -> str:
    """A short stable hash of JSON-ready settings and the protocol's version.

    Every stage, collection id and evaluation is keyed by this, so a new protocol
    version never reuses an older one's data, models or scores. Protocol 2's were
    made by its own code before the version entered the keys; they keep theirs.
    """
    if PROTOCOL_VERSION > 2:
        settings = {**settings, "protocol": PROTOCOL_VERSION}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def log(message: str) -> None:
    """Prints `message` to stderr with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Stages:
    """Stage results as JSON files `<root>/stages/<name>-<key>.json`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "stages").mkdir(parents=True, exist_ok=True)

    def path(self, name: str, settings: dict) -> Path:
        """The file of stage `name` under `settings`."""
        return self.root / "stages" / f"{name}-{key(settings)}.json"

    def done(self, name: str, settings: dict) -> dict | None:
        """The stage's recorded result, or None when it has not run under these settings."""
        path = self.path(name, settings)
        return json.loads(path.read_text())["result"] if path.exists() else None

    def run(self, name: str, settings: dict, work: Callable[[], dict]) -> dict:
        """The stage's cached result, or `work()`'s, recorded once it returns."""
        cached = self.done(name, settings)
        if cached is not None:
            log(f"{name}: cached")
            return cached
        log(f"{name}: running")
        started = time.monotonic()
        result = work()
        seconds = time.monotonic() - started
        path = self.path(name, settings)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"settings": settings, "seconds": round(seconds, 1), "result": result}, indent=2
            )
        )
        os.replace(tmp, path)
        log(f"{name}: done in {seconds:.0f} s")
        return result
