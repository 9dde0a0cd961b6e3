"""Library start-up noise stays off the terminal; every other line, and what comes later, passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.common import quiet

ROOT = Path(__file__).parents[2]
SCRIPT = """
import os, sys
from services.common import quiet
quiet.install()
import pybullet
import tensorflow as tf
print("sum", tf.reduce_sum(tf.constant([1.0, 2.0])).numpy(), flush=True)
print("a python warning", file=sys.stderr, flush=True)
os.write(2, b"E0000 00:00:1.0 1 x.cc:1] a native error after start-up\\n")
"""


def _run(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_tensorflow_and_pybullet_start_quietly_and_later_lines_pass():
    result = _run()
    assert result.stdout == "sum 3.0\n"
    assert result.stderr == (
        "a python warning\nE0000 00:00:1.0 1 x.cc:1] a native error after start-up\n"
    )
    # What the filter drops is there without it: the test would see it.
    loud = _run(**{quiet.DISABLE_ENV: "1"}).stderr
    assert "pybullet build time" in loud and "absl::InitializeLog" in loud


def test_the_filter_drops_only_the_known_lines(capfd):
    with quiet.filtered(2):
        os.write(2, b"pybullet build time: Jan 1\nkept 1\nI0000 00:00:1.5  7 port.cc:153] oneDNN")
        os.write(2, b" custom operations are on.\nW0000 00:00:2.0 7 a.cc:1] start-up\nkept 2")
    assert capfd.readouterr().err == "kept 1\nkept 2"
