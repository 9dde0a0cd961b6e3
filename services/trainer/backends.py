"""Job backends: run one graspfleet command as a job, poll it, stop it; and the local one.

A backend knows nothing about training: it runs `graspfleet <args>` somewhere
and reports on it by a handle (a string the caller persists). The trainer
runs `train job --run-dir ...` this way; the sim-farm can run collection
shards the same way. Handles survive the caller's restart: a new backend
object polls and cancels a job it did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from services.common import logs

log = logs.get_logger(__name__)

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
# No longer running, and how it ended is not known (e.g. a process the caller did not start).
GONE = "gone"
# Set in a local job's environment: proof that a process found by pid is that job.
JOB_ENV = "GRASPFLEET_JOB"


@dataclass(frozen=True)
class JobSpec:
    """One job.

    Attributes:
        name: Unique name: lowercase letters, digits and '-', at most 63 characters
            (it names the Kubernetes Job).
        args: The words after the `graspfleet` program, e.g. ("train", "job", "--run-dir", d).
        log_path: Where a local job's stdout and stderr go.
        labels: Kubernetes labels of the Job and its pod.
        env: Extra environment variables.
        cpu: CPU request and limit of a Kubernetes pod; empty: the backend's (training-sized).
        memory: Memory request and limit of a Kubernetes pod; empty: the backend's.
        gpus: GPUs of a Kubernetes pod; None: the backend's.
    """

    name: str
    args: tuple[str, ...]
    log_path: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cpu: str = ""
    memory: str = ""
    gpus: int | None = None


@dataclass(frozen=True)
class JobStatus:
    """Where a job is: RUNNING, SUCCEEDED, FAILED or GONE, with a detail for people."""

    state: str
    detail: str = ""


class JobBackend(Protocol):
    """What the trainer (and later the sim-farm) needs from a place that runs jobs."""

    name: str

    def start(self, job: JobSpec) -> str:
        """Starts the job; returns its handle."""
        ...

    def poll(self, handle: str) -> JobStatus:
        """The job's state now."""
        ...

    def cancel(self, handle: str) -> None:
        """Asks the job to stop; a job already gone is not an error."""
        ...

    def reap(self) -> None:
        """Housekeeping between polls (e.g. escalating a cancel)."""
        ...


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _environment(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


class LocalBackend:
    """Jobs as local processes: `python -m services.cli <args>`, each in its own session.

    Its own session means the job outlives a trainer restart and can be stopped
    as a process group. The handle `local:<pid>:<start ticks>:<name>` lets a new
    trainer tell the job from an unrelated process that reused the pid: the start
    time must match and the process environment must carry GRASPFLEET_JOB=<name>.

    Args:
        cancel_grace_s: Seconds between SIGTERM and SIGKILL when cancelling.
        program: The command before the job's args.
    """

    name = "local"

    def __init__(self, cancel_grace_s: float = 10.0, program: tuple[str, ...] = ()) -> None:
        self.cancel_grace_s = cancel_grace_s
        self.program = program or (sys.executable, "-m", "services.cli")
        self._children: dict[str, subprocess.Popen] = {}
        self._stopping: dict[str, float] = {}  # handle -> when to SIGKILL

    def start(self, job: JobSpec) -> str:
        """Starts the job in its own session, its output appended to its log; returns its handle."""
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **job.env}
        env[JOB_ENV] = job.name
        log_path = job.log_path or Path(os.devnull)
        with open(log_path, "ab") as output:
            process = subprocess.Popen(
                [*self.program, *job.args],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        stat = _proc_stat(process.pid)
        handle = f"local:{process.pid}:{stat[1] if stat else 0}:{job.name}"
        self._children[handle] = process
        log.info("job started", extra={"job": job.name, "pid": process.pid})
        return handle

    @staticmethod
    def parse(handle: str) -> tuple[int, int, str]:
        """(pid, start ticks, job name) of a local handle.

        Raises:
            ValueError: not a local handle.
        """
        kind, pid, ticks, name = handle.split(":", 3)
        if kind != "local":
            raise ValueError(f"{handle!r} is not a local job handle")
        return int(pid), int(ticks), name

    def _alive(self, handle: str) -> bool:
        """Whether the handle's process still runs (and really is that job)."""
        pid, ticks, name = self.parse(handle)
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X") or (ticks and stat[1] != ticks):
            return False
        return f"{JOB_ENV}={name}" in _environment(pid)

    def poll(self, handle: str) -> JobStatus:
        """The job's state: running, its exit (code or signal), or gone."""
        process = self._children.get(handle)
        if process is not None:
            code = process.poll()
            if code is None:
                return JobStatus(RUNNING)
            if code == 0:
                return JobStatus(SUCCEEDED, "exit code 0")
            if code < 0:
                return JobStatus(FAILED, f"killed by {signal.Signals(-code).name}")
            return JobStatus(FAILED, f"exit code {code}")
        if self._alive(handle):
            return JobStatus(RUNNING)
        self._reap_zombie(handle)
        return JobStatus(GONE, f"process {self.parse(handle)[0]} is no longer running")

    def _reap_zombie(self, handle: str) -> None:
        # An adopted job is our child only when the trainer that started it lived in this
        # same process (tests); reap it then, or it stays a zombie.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.parse(handle)[0], os.WNOHANG)

    def _running(self, handle: str) -> bool:
        # An unreaped child keeps its pid, so its Popen knows better than /proc.
        process = self._children.get(handle)
        return process.poll() is None if process is not None else self._alive(handle)

    def cancel(self, handle: str) -> None:
        """Sends the job's process group SIGTERM; `reap` kills it if it outlives the grace."""
        if not self._running(handle):
            return
        pid = self.parse(handle)[0]
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self._stopping[handle] = time.monotonic() + self.cancel_grace_s
        log.info("job cancelled", extra={"pid": pid, "signal": "SIGTERM"})

    def reap(self) -> None:
        """Forgets cancelled jobs that ended and SIGKILLs those still running past their grace."""
        for handle, deadline in list(self._stopping.items()):
            # poll, not _alive: polling our own child also reaps it, so no zombie stays behind.
            if self.poll(handle).state != RUNNING:
                self._stopping.pop(handle)
            elif time.monotonic() >= deadline:
                pid = self.parse(handle)[0]
                log.warning("job ignored SIGTERM; killing it", extra={"pid": pid})
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
