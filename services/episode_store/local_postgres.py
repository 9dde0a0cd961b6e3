"""A private, throw-away PostgreSQL server on a unix socket, for tests, benchmarks and local runs."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
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


def bindir() -> str:
    """The folder of PostgreSQL's programs (initdb, pg_ctl, psql, pg_dump, pg_restore).

    Raises:
        PostgresUnavailable: no initdb on PATH or in /usr/lib/postgresql/*/bin.
    """
    found = _find_bindir()
    if found is None:
        raise PostgresUnavailable(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); "
            "`make sysdeps` installs it"
        )
    return found


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


def _free_port() -> int:
    # The port may be taken again before the server binds it; then the server fails to start.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _hand_to_server(path: str, mode: int) -> None:
    """Gives a file or folder to the server's user: it must own its key file and write its folders."""
    os.chmod(path, mode)
    if os.geteuid() == 0:
        server_user = pwd.getpwnam(_SERVER_OS_USER)
        os.chown(path, server_user.pw_uid, server_user.pw_gid)


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
def local_postgres(
    *,
    durable: bool = False,
    tls_dir: str | os.PathLike[str] | None = None,
    hba_file: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """Runs a private PostgreSQL server while the context is open; yields its DSN.

    The server listens on a unix socket inside its temporary directory (the DSN's host, where
    the superuser connects without a password) and is stopped and deleted when the context
    closes. With `tls_dir` it also listens on 127.0.0.1, at the DSN's port, with TLS on.

    Args:
        durable: Keep fsync on (for honest benchmark numbers); off is faster for tests.
        tls_dir: A folder holding `tls.crt` and `tls.key`, as a kubernetes.io/tls Secret
            does: the server's certificate.
        hba_file: A pg_hba.conf to use instead of initdb's (which trusts every connection).

    Raises:
        PostgresUnavailable: no initdb on PATH or in /usr/lib/postgresql/*/bin.
    """
    programs = bindir()
    # /tmp itself is open to every user, so the server user can reach what lies below.
    root = tempfile.mkdtemp(prefix="graspfleet-pg-", dir="/tmp")
    data_dir = os.path.join(root, "data")
    socket_dir = os.path.join(root, "socket")
    log_file = os.path.join(root, "server.log")
    os.mkdir(socket_dir)
    for path in (root, socket_dir):
        # mkdtemp makes the directory private to us; the server user must write in it.
        _hand_to_server(path, 0o755)
    as_user = _as_server_user()
    pg_ctl = os.path.join(programs, "pg_ctl")
    started = False
    try:
        _run(
            [
                *as_user,
                os.path.join(programs, "initdb"),
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
        settings = [f"unix_socket_directories = '{socket_dir}'"]
        dsn = f"host={socket_dir} dbname=postgres user={_SUPERUSER}"
        if tls_dir is None:
            settings.append("listen_addresses = ''")
        else:
            port = _free_port()
            # PostgreSQL refuses a key file that others may read.
            for name, mode in (("tls.crt", 0o644), ("tls.key", 0o600)):
                shutil.copyfile(os.path.join(tls_dir, name), os.path.join(root, name))
                _hand_to_server(os.path.join(root, name), mode)
            settings += [
                "listen_addresses = '127.0.0.1'",
                f"port = {port}",
                "ssl = on",
                f"ssl_cert_file = '{os.path.join(root, 'tls.crt')}'",
                f"ssl_key_file = '{os.path.join(root, 'tls.key')}'",
            ]
            dsn += f" port={port}"
        if hba_file is not None:
            shutil.copyfile(hba_file, os.path.join(root, "pg_hba.conf"))
            _hand_to_server(os.path.join(root, "pg_hba.conf"), 0o644)
            settings.append(f"hba_file = '{os.path.join(root, 'pg_hba.conf')}'")
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
        yield dsn
    finally:
        try:
            if started:
                _run([*as_user, pg_ctl, "stop", "-D", data_dir, "-m", "immediate"], cwd=root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
