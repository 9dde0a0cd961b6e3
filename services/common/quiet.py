"""Library start-up noise kept off the terminal: what TensorFlow and PyBullet print natively.

TensorFlow's C++ runtime writes to file descriptor 2 before any logging is set
up (absl's "All log messages before absl::InitializeLog() ...", oneDNN and
CPU-feature notes, and on a machine without a GPU the CUDA probe's "failed
call to cuInit"); PyBullet prints its build time there when it is imported. No setting silences all of it: TF_CPP_MIN_LOG_LEVEL comes too late
for the first lines, and at the level that hides the CUDA probe it hides every
real error too.

`install()` makes the first import of each library run with its descriptor
routed through a filter that drops those known start-up lines and passes every
other byte through; TensorFlow's device probe runs inside the same window.
Afterwards the descriptors are the process's own again, so whatever either
library says later reaches the terminal or the log as before, TensorFlow's
INFO lines apart (TF_CPP_MIN_LOG_LEVEL=1 unless set): its warnings and errors
pass. GRASPFLEET_NATIVE_LOGS=1 turns the filter off.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Iterator

DISABLE_ENV = "GRASPFLEET_NATIVE_LOGS"

# Lines a library prints while it starts, and nothing else: matched whole.
NOISE = re.compile(
    rb"^(?:"
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} [\d:. ]+\d+ [\w.]+:\d+\] .*"  # C++ INFO and WARNING lines of the start-up
    rb"|E\d{4} [\d:. ]+\d+ [\w.]+:\d+\] .*(?:cuInit|Unable to register cu\w+ factory).*"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate "
    rb"compiler flags\."
    rb"|pybullet build time: .*"
    rb")\r?$"
)
# The libraries whose first import is filtered; both write their start-up lines to fd 2.
WATCHED = ("tensorflow", "pybullet")
STDERR = 2


@contextlib.contextmanager
def filtered(fd: int) -> Iterator[None]:
    """Routes descriptor `fd` through the NOISE filter until the block ends."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(fd)
    read, write = os.pipe()
    os.dup2(write, fd)
    os.close(write)
    drain = threading.Thread(target=_drain, args=(read, saved), name=f"quiet-fd{fd}")
    drain.start()
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved, fd)  # the pipe's last writer is gone: the drain reads to its end
        drain.join()
        os.close(saved)


def _drain(read: int, out: int) -> None:
    """Copies the pipe to `out` line by line, leaving out the NOISE lines."""
    pending = b""
    with os.fdopen(read, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            _write(out, [line for line in lines if not NOISE.match(line)])
    if pending and not NOISE.match(pending):
        os.write(out, pending)


def _write(out: int, lines: list[bytes]) -> None:
    if lines:
        os.write(out, b"\n".join(lines) + b"\n")


class _QuietLoader(importlib.abc.Loader):
    """The library's own loader, run inside the filter (and, for TensorFlow, its device probe)."""

    def __init__(self, loader: importlib.abc.Loader, name: str) -> None:
        self.loader = loader
        self.name = name

    def create_module(self, spec):
        with filtered(STDERR):
            return self.loader.create_module(spec)  # an extension module runs its init here

    def exec_module(self, module) -> None:
        with filtered(STDERR):
            self.loader.exec_module(module)
            if self.name == "tensorflow":
                module.config.list_physical_devices("GPU")  # the CUDA probe, inside the window


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds a watched library with the other finders, then wraps its loader."""

    def __init__(self) -> None:
        self._finding: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        if fullname not in WATCHED or fullname in self._finding:
            return None
        self._finding.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader, fullname)
        return spec


_FINDER = _QuietFinder()


def install() -> None:
    """Filters the start-up noise of the watched libraries not imported yet (idempotent)."""
    if os.environ.get(DISABLE_ENV) == "1" or _FINDER in sys.meta_path:
        return
    # TensorFlow's later INFO lines (data pipeline notes) too; its warnings and errors pass.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.meta_path.insert(0, _FINDER)
