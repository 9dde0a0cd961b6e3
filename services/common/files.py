"""Durable files: write to a temporary name, fsync, rename in one step, fsync the folder.

Readers see the old content or the new, never a half-written file, and once a
call returns the content survives a crash of the machine.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Makes the content written to the file at `path` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_dir(path: Path) -> None:
    """Makes a rename or a new file in `path` durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """Makes every file and folder under `root` durable (before renaming `root` into place)."""
    for folder, _, files in os.walk(root, topdown=False):
        for file in files:
            fsync_file(Path(folder) / file)
        fsync_dir(Path(folder))


def replace_durably(tmp: Path, final: Path) -> None:
    """Moves a fully written temporary file into place, durably."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_atomically(path: Path, data: bytes | str, tmp_dir: Path | None = None) -> None:
    """Replaces `path` with `data` in one step, durable once this returns.

    Args:
        path: The file to write.
        data: Its new content (str is written as UTF-8).
        tmp_dir: Where the temporary file goes (same filesystem as `path`);
            beside `path` by default, under a dot-name no reader lists.
    """
    path = Path(path)
    tmp = (tmp_dir or path.parent) / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
