"""PostgreSQL as k8s/components/postgres runs it, on a local server with the component's own files.

The server speaks TLS with a certificate of a test CA (services.common.certificates) and admits whom the component's pg_hba.conf admits; roles.sql creates the roles with the
environment the StatefulSet gives it; the store connects with the component's DSN; backup.sh and
restore.sh run with the CronJobs' environment. Only the addresses (a loopback port instead of the
Service) and the files' folders differ.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import synthetic as samples
from services.common.auth import bearer
from services.common.certificates import issue, make_ca
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.local_postgres import PostgresUnavailable, bindir, local_postgres
from services.episode_store.metadata import PostgresMetadataStore
from services.episode_store.server import create_server

pytestmark = pytest.mark.postgres

COMPONENT = Path(__file__).resolve().parents[2] / "k8s" / "components" / "postgres"
DATABASE = "graspfleet"
STORE_ROLE, BACKUP_ROLE = "graspfleet_store", "graspfleet_backup"
TOKEN = "backup-test-token"
STORE_SECRET, BACKUP_SECRET = "graspfleet-postgres-store", "graspfleet-postgres-backup"
AUTO = common_pb2.Label(state=common_pb2.LABEL_STATE_AUTO, success=False, source="test")


def manifests(file: str) -> list[dict]:
    return [o for o in yaml.safe_load_all((COMPONENT / file).read_text()) if o]


def container(file: str, kind: str, name: str) -> dict:
    (workload,) = [o for o in manifests(file) if (o["kind"], o["metadata"]["name"]) == (kind, name)]
    spec = workload["spec"]
    if kind == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    (found,) = spec["template"]["spec"]["containers"]
    return found


@dataclass(frozen=True)
class Cluster:
    """A local server run with the component's pg_hba.conf and a certificate for localhost."""

    admin_dsn: str  # the superuser, on the server's socket (as `kubectl exec` into its pod)
    port: int
    ca: Path
    passwords: dict[str, str]  # Secret name -> its password

    def secret_env(self, spec: dict) -> dict[str, str]:
        """A container's environment: plain values, and the Secrets' passwords."""
        env = {}
        for entry in spec.get("env", []):
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            else:
                env[entry["name"]] = self.passwords[entry["valueFrom"]["secretKeyRef"]["name"]]
        return env

    def address(self) -> dict[str, str]:
        """Where the pods dial the Service `postgres`: here, localhost with the test CA."""
        return {
            "host": "localhost",
            "hostaddr": "127.0.0.1",
            "port": str(self.port),
            "sslrootcert": str(self.ca),
        }

    def store_dsn(self) -> str:
        """The store's DSN from the component's patch, with the password its pod gets."""
        spec = container("episode-store.yaml", "Deployment", "episode-store")
        env = self.secret_env(spec)
        params = conninfo_to_dict(env["GRASPFLEET_POSTGRES_DSN"])
        return make_conninfo(**{**params, **self.address(), "password": env["PGPASSWORD"]})

    def script_env(self, cronjob: str, backup_dir: Path) -> dict[str, str]:
        """The environment a CronJob gives its script, with PostgreSQL's programs on PATH."""
        env = self.secret_env(container("backup.yaml", "CronJob", cronjob))
        address = self.address()
        env.update(
            PGHOST=address["host"],
            PGHOSTADDR=address["hostaddr"],
            PGPORT=address["port"],
            PGSSLROOTCERT=address["sslrootcert"],
            BACKUP_DIR=str(backup_dir),
        )
        return {"PATH": f"{bindir()}:{os.environ['PATH']}", "HOME": str(backup_dir), **env}

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        with psycopg.connect(make_conninfo(self.admin_dsn, dbname=dbname), autocommit=True) as db:
            db.execute(sql)

    def run_roles_sql(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """roles.sql as the postgres image runs it, with the StatefulSet's environment."""
        if env is None:
            env = self.secret_env(container("postgres.yaml", "StatefulSet", "postgres"))
        return subprocess.run(
            [
                os.path.join(bindir(), "psql"),
                "-v",
                "ON_ERROR_STOP=1",
                "--no-password",
                "--no-psqlrc",
                "--dbname",
                make_conninfo(self.admin_dsn, dbname=DATABASE),
                "-f",
                str(COMPONENT / "roles.sql"),
            ],
            env={"PATH": os.environ["PATH"], **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def fresh_database(self) -> None:
        """Sets the store's database aside and makes a new one with its roles: step 2 of
        README.md's "Restore"."""
        aside = f"{DATABASE}_before_restore"
        self.admin(f"DROP DATABASE IF EXISTS {aside}")
        with psycopg.connect(self.admin_dsn, autocommit=True) as db:
            exists = "SELECT 1 FROM pg_database WHERE datname = %s"
            if db.execute(exists, (DATABASE,)).fetchone():
                db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{DATABASE}'"
                )
                # Terminated sessions end a moment later; until then the rename is refused.
                for attempt in range(50):
                    try:
                        db.execute(f"ALTER DATABASE {DATABASE} RENAME TO {aside}")
                        break
                    except psycopg.errors.ObjectInUse:
                        if attempt == 49:
                            raise
                        time.sleep(0.1)
            db.execute(f"CREATE DATABASE {DATABASE}")
        done = self.run_roles_sql()
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("postgres-tls")
    server = issue(folder / "server", make_ca(folder / "ca"), "postgres")
    passwords = {
        name: secrets.token_hex(12) for name in ("graspfleet-postgres", STORE_SECRET, BACKUP_SECRET)
    }
    try:
        with local_postgres(tls_dir=server, hba_file=COMPONENT / "pg_hba.conf") as dsn:
            port = int(conninfo_to_dict(dsn)["port"])
            yield Cluster(dsn, port, server / "ca.crt", passwords)
    except PostgresUnavailable as missing:
        pytest.skip(str(missing))


@pytest.fixture
def database(cluster: Cluster) -> Cluster:
    """The store's database, new and empty, with the roles roles.sql makes."""
    cluster.fresh_database()
    return cluster


def run_script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """One of the component's scripts, as its CronJob runs it."""
    return subprocess.run(
        ["/bin/bash", str(COMPONENT / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def summary(episode_id: str) -> episode_store_pb2.EpisodeSummary:
    return episode_store_pb2.EpisodeSummary(episode_id=episode_id, robot_id="kuka-01", shard="s")


def test_the_store_connects_as_its_role_with_the_servers_certificate_and_name_checked(
    database, tmp_path
):
    dsn = database.store_dsn()
    params = conninfo_to_dict(dsn)
    assert (params["sslmode"], params["user"], params["dbname"]) == (
        "verify-full",
        STORE_ROLE,
        DATABASE,
    )
    with psycopg.connect(dsn) as db:
        row = db.execute(
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row == (STORE_ROLE, True)
    refused = {
        # The certificate names localhost, not the name dialled.
        "another name": {"host": "postgres"},
        # A certificate of another CA.
        "another CA": {"sslrootcert": str(make_ca(tmp_path / "other-ca"))},
        # No TLS: pg_hba.conf refuses every plaintext connection.
        "plaintext": {"sslmode": "disable"},
        # The superuser, or another database, over the network.
        "the superuser": {"user": "postgres"},
        "another database": {"dbname": "postgres"},
    }
    for why, change in refused.items():
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(make_conninfo(dsn, **change), connect_timeout=5).close()
            pytest.fail(f"connected with {why}")


def test_the_store_may_use_its_database_and_nothing_more(database):
    store = PostgresMetadataStore(database.store_dsn(), pool_size=1)
    try:
        store.insert(summary("a"), "digest-a", AUTO)
        assert store.get("a")[0].episode_id == "a"
    finally:
        store.close()
    with psycopg.connect(database.store_dsn(), autocommit=True) as db:
        flags = db.execute(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname IN (%s, %s) ORDER BY rolname",
            (BACKUP_ROLE, STORE_ROLE),
        ).fetchall()
        assert flags == [
            (role, False, False, False, False, False) for role in (BACKUP_ROLE, STORE_ROLE)
        ]
        for sql in (
            "CREATE ROLE intruder LOGIN",
            "ALTER ROLE graspfleet_store SUPERUSER",
            "CREATE DATABASE another",
            "SELECT rolpassword FROM pg_authid",
            "COPY episodes TO PROGRAM 'true'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.execute(sql)
    backup = make_conninfo(
        database.store_dsn(), user=BACKUP_ROLE, password=database.passwords[BACKUP_SECRET]
    )
    with psycopg.connect(backup, autocommit=True) as db:
        assert db.execute("SELECT count(*) FROM episodes").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            db.execute("DELETE FROM episodes")
        # Read-only by default, and without the privilege when it asks for a writable transaction.
        db.execute("SET default_transaction_read_only = off")
        for sql in ("DELETE FROM episodes", "CREATE TABLE t (x INTEGER)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.execute(sql)


def test_roles_sql_hands_over_tables_a_superuser_created(database):
    """A database from before the roles: the store ran as the superuser and made the tables."""
    as_superuser = PostgresMetadataStore(make_conninfo(database.admin_dsn, dbname=DATABASE))
    try:
        as_superuser.insert(summary("old"), "digest-old", AUTO)
    finally:
        as_superuser.close()
    done = database.run_roles_sql()
    assert done.returncode == 0, done.stderr
    store = PostgresMetadataStore(database.store_dsn(), pool_size=1)
    try:
        new = store.insert(summary("new"), "digest-new", AUTO).summary
        _, history = store.relabel(
            "old", common_pb2.Label(state=common_pb2.LABEL_STATE_RELABELED, success=True)
        )
        assert new.sequence == 2 and len(history) == 2
    finally:
        store.close()


def test_roles_sql_refuses_to_run_without_the_passwords(cluster):
    for missing in ("GRASPFLEET_STORE_PASSWORD", "GRASPFLEET_BACKUP_PASSWORD"):
        env = cluster.secret_env(container("postgres.yaml", "StatefulSet", "postgres"))
        del env[missing]
        done = cluster.run_roles_sql(env)
        assert done.returncode != 0
        assert "must be set" in done.stderr


def test_a_backup_keeps_the_newest_dumps_and_a_failed_one_deletes_nothing(database, tmp_path):
    backups = tmp_path / "backups"
    backups.mkdir()
    old = [f"graspfleet-2000010{day}T031700Z.dump" for day in (1, 2, 3)]
    for name in old:
        (backups / name).write_bytes(b"an old dump")
    (backups / ".graspfleet-19991231T031700Z.dump.partial").write_bytes(b"a failed run's")
    env = {**database.script_env("postgres-backup", backups), "BACKUP_KEEP": "2"}
    store = PostgresMetadataStore(database.store_dsn(), pool_size=1)
    try:
        store.insert(summary("a"), "digest-a", AUTO)
    finally:
        store.close()

    wrong = run_script("backup.sh", {**env, "PGPASSWORD": "not-the-password"})
    assert wrong.returncode != 0
    assert sorted(p.name for p in backups.iterdir() if not p.name.startswith(".")) == old

    done = run_script("backup.sh", env)
    assert done.returncode == 0, done.stderr
    (new,) = [p.name for p in backups.iterdir() if p.name not in old]
    # The newest two: the one just made and the newest before it. No partial file is left.
    assert sorted(p.name for p in backups.iterdir()) == [old[-1], new]
    listed = subprocess.run(
        [os.path.join(bindir(), "pg_restore"), "--list", str(backups / new)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "TABLE DATA public episodes" in listed.stdout


def snapshot(stub) -> dict[str, episode_store_pb2.GetEpisodeResponse]:
    """Everything a store serves about each episode: summary, steps and label history."""
    return {
        s.episode_id: stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(episode_id=s.episode_id, include_steps=True)
        )
        for s in client.list_all(stub)
    }


def relabel(stub, episode_id: str, success: bool, reason: str) -> None:
    stub.Relabel(
        episode_store_pb2.RelabelRequest(
            episode_id=episode_id, success=success, reason=reason, source="user:ana"
        ),
        metadata=bearer(TOKEN),
    )


def test_a_restored_database_serves_every_episode_and_label_as_before(database, tmp_path):
    """The procedure of README.md: a backup while the store runs, a new database, the restore,
    and a store started on it with the same episodes volume. What came after the backup: its
    episodes come back from their shards, its relabels are lost."""
    config = EpisodeStoreConfig(
        port=0,
        grace_s=0.0,
        data_dir=str(tmp_path / "episodes"),
        postgres_dsn=database.store_dsn(),
        auth_token=TOKEN,
        # Index a shard without a row at once (the default waits for an ingest to commit it).
        orphan_age_s=0.0,
    )
    backups = tmp_path / "backups"
    backups.mkdir()
    late = samples.sample_episode(6, robot_id="kuka-01", num_steps=3)
    server = create_server(config)
    try:
        channel, stub = client.connect(server.address)
        with channel:
            for seed in range(6):
                record = samples.sample_episode(seed, robot_id=f"kuka-0{seed % 2 + 1}", num_steps=3)
                client.write_episode(stub, record)
            relabel(stub, "sample-1", True, "seen on video")
            relabel(stub, "sample-4", False, "dropped after lift")
            relabel(stub, "sample-4", True, "regrasped, held")
            before = snapshot(stub)
            backed_up = run_script("backup.sh", database.script_env("postgres-backup", backups))
            assert backed_up.returncode == 0, backed_up.stderr
            client.write_episode(stub, late)
            relabel(stub, "sample-2", True, "after the backup")
    finally:
        server.stop(grace_s=0)
    assert len(before) == 6
    assert len(before["sample-4"].label_history) == 3

    database.fresh_database()
    restore_env = database.script_env("postgres-restore", backups)
    restored = run_script("restore.sh", restore_env)
    assert restored.returncode == 0, restored.stderr
    # Never over a database that holds tables.
    again = run_script("restore.sh", restore_env)
    assert again.returncode == 1 and "restore into a new, empty one" in again.stderr

    server = create_server(config)
    try:
        channel, stub = client.connect(server.address)
        with channel:
            after = snapshot(stub)
            late_served = after.pop(late.header.episode_id)
            assert after == before
            # From its shard: every step, and the label its robot gave it.
            assert list(late_served.steps) == list(late.steps)
            assert len(late_served.label_history) == 1
            # The store goes on where it was: new episodes after the restored ones.
            client.write_episode(stub, samples.sample_episode(7, robot_id="kuka-01", num_steps=3))
            sequences = {s.episode_id: s.sequence for s in client.list_all(stub)}
            assert sequences["sample-7"] == 8 == max(sequences.values())
    finally:
        server.stop(grace_s=0)
    # And the restored database is backed up like the first.
    assert run_script("backup.sh", database.script_env("postgres-backup", backups)).returncode == 0
