"""A private, throw-away PostgreSQL server on a unix socket, for tests, benchmarks and local runs."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# initdb's superuser; trust authentication lets local clients connect as it without a password.
_SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; as root, the server runs as this user instead.
_SERVER_OS_USER = "nobody"
_COMMAND_TIMEOUT_S = 120


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine (`make sysdeps` installs them)."""


def _find_bindir() -> str | None:
    initdb = shutil.which("initdb")
    if initdb:
        # The real directory, where pg_ctl and postgres sit beside initdb.
        return os.path.dirname(os.path.realpath(initdb))
    # Debian and Ubuntu keep the binaries off PATH, one directory per major version.
    bindirs = [os.path.dirname(path) for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    # The newest major version; the directory names are the version numbers.
    bindirs.sort(
        key=lambda bindir: int(bindir.split("/")[-2]) if bindir.split("/")[-2].isdigit() else 0
    )
    return bindirs[-1] if bindirs else None


def _as_server_user() -> list[str]:
    """The command prefix that drops root privileges, or nothing when not root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", _SERVER_OS_USER, "--"]
    return ["setpriv", f"--reuid={_SERVER_OS_USER}", "--regid=nogroup", "--clear-groups"]


def _run(command: list[str], cwd: str) -> None:
    result = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed with exit code {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )


@contextmanager
def local_postgres(*, durable: bool = False) -> Iterator[str]:
    """Runs a private PostgreSQL server while the context is open; yields its DSN.

    The server listens on a unix socket inside its temporary directory only (no TCP
    port) and is stopped and deleted when the context closes.

    Args:
        durable: Keep fsync on (for honest benchmark numbers); off is faster for tests.

    Raises:
        PostgresUnavailable: no initdb on PATH or in /usr/lib/postgresql/*/bin.
    """
    bindir = _find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); "
            "`make sysdeps` installs it"
        )
    # /tmp itself is open to every user, so the server user can reach what lies below.
    root = tempfile.mkdtemp(prefix="graspfleet-pg-", dir="/tmp")
    data_dir = os.path.join(root, "data")
    socket_dir = os.path.join(root, "socket")
    log_file = os.path.join(root, "server.log")
    os.mkdir(socket_dir)
    for path in (root, socket_dir):
        # mkdtemp makes the directory private to us; the server user must write in it.
        os.chmod(path, 0o755)
        if os.geteuid() == 0:
            server_user = pwd.getpwnam(_SERVER_OS_USER)
            os.chown(path, server_user.pw_uid, server_user.pw_gid)
    as_user = _as_server_user()
    pg_ctl = os.path.join(bindir, "pg_ctl")
    started = False
    try:
        _run(
            [
                *as_user,
                os.path.join(bindir, "initdb"),
                f"--pgdata={data_dir}",
                f"--username={_SUPERUSER}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cwd=root,
        )
        # Appended settings override initdb's defaults.
        settings = [
            "listen_addresses = ''",
            f"unix_socket_directories = '{socket_dir}'",
        ]
        if not durable:
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        conf = os.path.join(data_dir, "postgresql.conf")
        with open(conf, "a", encoding="utf-8") as f:
            f.write("\n".join(settings) + "\n")
        try:
            _run([*as_user, pg_ctl, "start", "--wait", "-D", data_dir, "-l", log_file], cwd=root)
        except RuntimeError as error:
            log = Path(log_file).read_text(encoding="utf-8") if os.path.exists(log_file) else ""
            raise RuntimeError(f"{error}\nserver log:\n{log}") from None
        started = True
        yield f"host={socket_dir} dbname=postgres user={_SUPERUSER}"
    finally:
        try:
            if started:
                _run([*as_user, pg_ctl, "stop", "-D", data_dir, "-m", "immediate"], cwd=root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
