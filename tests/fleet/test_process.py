"""A service started as a child process does not outlive the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.fixtures.waiting import until

# A parent that starts an episode store and prints its pid, then waits to be killed.
PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from services.fleet.process import ServiceProcess
    work = Path(sys.argv[1])
    store = ServiceProcess("episode-store", ["store", "serve"], {"data_dir": str(work / "store")}, work)
    store.start()
    print(store.process.pid, flush=True)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead; only its parent (init here) has yet to reap it.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux's")
def test_a_service_ends_when_the_process_that_started_it_is_killed(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    child = None
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)  # no finalizer runs: as a timeout's kill -9
        parent.wait()
        assert until(lambda: not _alive(child), timeout_s=30)
    finally:
        parent.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)  # without the fix: leave nothing behind either


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux's")
@pytest.mark.parametrize(("parent", "code"), [("os.getppid()", 0), ("1", -signal.SIGTERM)])
def test_the_child_asks_for_the_signal_itself_and_hides_the_request_from_its_own_children(
    parent, code
):
    # Started by a parent that asked (its pid in the variable): the variable is gone
    # afterwards. Asked by a pid that is not its parent (that parent already died): it ends.
    script = textwrap.dedent(
        f"""
        import os
        from services.fleet import process
        os.environ[process.PARENT_ENV] = str({parent})
        process.end_with_parent_if_asked()
        print(process.PARENT_ENV in os.environ)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=os.getcwd(), timeout=60
    )
    assert done.returncode == code, done.stderr
    if code == 0:
        assert done.stdout.strip() == "False"
