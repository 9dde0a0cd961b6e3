"""The postgres component, as built: TLS checked by every client, the store and the backup as roles
without superuser powers, nightly backups into their own volume, a restore run by hand only.

tests/episode_store/test_postgres_backup.py runs the same files (roles.sql, pg_hba.conf,
backup.sh, restore.sh) against a real PostgreSQL; here is what they are wired to.
"""

from __future__ import annotations

import re

from psycopg.conninfo import conninfo_to_dict

from tests.k8s import kustomize
from tests.k8s import manifests as m

COMPONENT = "postgres"
FOLDER = kustomize.K8S / "components" / COMPONENT
TLS_SECRET = "graspfleet-postgres-tls"
SUPERUSER_SECRET = "graspfleet-postgres"
STORE_ROLE, BACKUP_ROLE = "graspfleet_store", "graspfleet_backup"
BACKUPS_CLAIM = "graspfleet-postgres-backups"
# The powers neither role may have; roles.sql must say NO to each.
POWERS = ("SUPERUSER", "CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS")


def with_postgres(built: dict) -> list[tuple[str, list[dict]]]:
    found = [
        (c.name, objects)
        for c, objects in built.items()
        if c.overlay != "root"
        and (COMPONENT in c.components or COMPONENT in kustomize.overlay_components(c.overlay))
    ]
    assert {"dev+postgres", "fleet"} <= {name for name, _ in found}
    return found


def pod_spec(workload: dict) -> dict:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return m.pod_spec(workload)


def only_container(workload: dict) -> dict:
    (container,) = pod_spec(workload)["containers"]
    return container


def secret_refs(container: dict) -> dict[str, str]:
    """Environment variable -> the Secret it comes from."""
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def mounted_volume(workload: dict, container: dict, path: str) -> dict:
    """The volume whose mount holds `path`."""
    (name,) = [
        v["name"] for v in container["volumeMounts"] if path.startswith(v["mountPath"] + "/")
    ]
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == name]
    return volume


def config_map(objects: list[dict], volume: dict) -> dict:
    return m.named(objects, "ConfigMap", volume["configMap"]["name"])


def check_verifies_the_server(at: str, workload: dict, container: dict, params: dict) -> None:
    """TLS with the server's certificate and name checked against the CA from its Secret, and
    only the CA: a client never mounts the server's key."""
    assert params["sslmode"] == "verify-full", at
    assert params["host"] == "postgres", at
    volume = mounted_volume(workload, container, params["sslrootcert"])
    assert volume["secret"]["secretName"] == TLS_SECRET, at
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], at
    assert params["sslrootcert"].endswith("/ca.crt"), at


def check_hardened(at: str, workload: dict) -> None:
    pod = pod_spec(workload)
    assert pod["securityContext"]["runAsNonRoot"] is True, at
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, at
    assert pod["automountServiceAccountToken"] is False, at
    container = only_container(workload)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False, at
    assert security["readOnlyRootFilesystem"] is True, at
    assert security["capabilities"] == {"drop": ["ALL"]}, at
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][section]), at
    assert "emptyDir" in mounted_volume(workload, container, "/tmp/x"), at


def test_the_store_dials_postgres_as_its_role_and_checks_the_servers_certificate(built):
    for name, objects in with_postgres(built):
        store = m.named(objects, "Deployment", "episode-store")
        container = only_container(store)
        params = conninfo_to_dict(m.env(container)["GRASPFLEET_POSTGRES_DSN"])
        assert (params["user"], params["dbname"]) == (STORE_ROLE, "graspfleet"), name
        assert "password" not in params, name
        assert secret_refs(container)["PGPASSWORD"] == "graspfleet-postgres-store", name
        check_verifies_the_server(name, store, container, params)


def test_the_server_speaks_tls_with_its_certificate_and_the_components_pg_hba(built):
    for name, objects in with_postgres(built):
        postgres = m.named(objects, "StatefulSet", "postgres")
        container = only_container(postgres)
        args = container["args"]
        settings = dict(args[i + 1].split("=", 1) for i, flag in enumerate(args) if flag == "-c")
        assert settings["ssl"] == "on", name
        for key in ("ssl_cert_file", "ssl_key_file"):
            volume = mounted_volume(postgres, container, settings[key])
            assert volume["secret"]["secretName"] == TLS_SECRET, name
            # PostgreSQL refuses a key that others than its owner (root) and group may read.
            assert volume["secret"]["defaultMode"] == 0o440, name
        hba = config_map(objects, mounted_volume(postgres, container, settings["hba_file"]))
        assert hba["data"]["pg_hba.conf"] == (FOLDER / "pg_hba.conf").read_text(), name
        certificate = m.named(objects, "Certificate", TLS_SECRET)["spec"]
        assert certificate["secretName"] == TLS_SECRET, name
        # The name the clients dial (the Service) is the certificate's.
        service = m.named(objects, "Service", "postgres")
        assert service["metadata"]["name"] in certificate["dnsNames"], name
        assert m.backing(service, m.workloads(objects)) == [postgres], name


def test_pg_hba_admits_the_two_roles_over_tls_only():
    rules = [
        line.split()
        for line in (FOLDER / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    network = [rule for rule in rules if rule[0] != "local"]
    assert network[0] == [
        "hostssl",
        "graspfleet",
        f"{STORE_ROLE},{BACKUP_ROLE}",
        "all",
        "scram-sha-256",
    ]
    assert network[1:] == [["host", "all", "all", "all", "reject"]]


def test_creating_the_cluster_makes_the_roles_without_superuser_powers(built):
    text = (FOLDER / "roles.sql").read_text()
    for role in (STORE_ROLE, BACKUP_ROLE):
        (attributes,) = re.findall(rf"'ALTER ROLE {role} (.*?)PASSWORD %L'", text, re.S)
        words = set(re.sub(r"'\s*'", " ", attributes).split())
        assert "LOGIN" in words and {f"NO{power}" for power in POWERS} <= words, role
    for name, objects in with_postgres(built):
        postgres = m.named(objects, "StatefulSet", "postgres")
        container = only_container(postgres)
        init = config_map(
            objects, mounted_volume(postgres, container, "/docker-entrypoint-initdb.d/roles.sql")
        )
        assert init["data"] == {"roles.sql": text}, name
        # roles.sql reads the roles' passwords; the superuser's stays with this pod alone.
        assert secret_refs(container) == {
            "POSTGRES_PASSWORD": "graspfleet-postgres",
            "GRASPFLEET_STORE_PASSWORD": "graspfleet-postgres-store",
            "GRASPFLEET_BACKUP_PASSWORD": "graspfleet-postgres-backup",
        }, name
        for workload in [*m.workloads(objects), *m.of_kind(objects, "CronJob")]:
            if workload is not postgres:
                for other in pod_spec(workload)["containers"]:
                    assert SUPERUSER_SECRET not in secret_refs(other).values(), name


def test_backups_run_nightly_one_at_a_time_into_their_volume(built):
    script = (FOLDER / "backup.sh").read_text()
    for name, objects in with_postgres(built):
        cronjob = m.named(objects, "CronJob", "postgres-backup")
        at = f"{name}: {kustomize.describe(cronjob)}"
        assert cronjob["metadata"]["namespace"] == kustomize.NAMESPACE, at
        spec = cronjob["spec"]
        assert spec["concurrencyPolicy"] == "Forbid" and not spec.get("suspend"), at
        assert 0 < spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] <= 24 * 3600, at
        check_hardened(at, cronjob)
        container = only_container(cronjob)
        env = m.env(container)
        # The script the tests run, with the role that may only read.
        assert container["command"][-1] == "/etc/postgres-backup/backup.sh", at
        scripts = config_map(objects, mounted_volume(cronjob, container, container["command"][-1]))
        assert scripts["data"]["backup.sh"] == script, at
        assert "pg_dump --format=custom" in script
        assert env["PGUSER"] == BACKUP_ROLE, at
        assert secret_refs(container) == {"PGPASSWORD": "graspfleet-postgres-backup"}, at
        assert int(env["BACKUP_KEEP"]) >= 2, at
        params = {"host": env["PGHOST"], "sslmode": env["PGSSLMODE"]}
        check_verifies_the_server(
            at, cronjob, container, {**params, "sslrootcert": env["PGSSLROOTCERT"]}
        )
        volume = mounted_volume(cronjob, container, env["BACKUP_DIR"] + "/dump")
        assert volume["persistentVolumeClaim"]["claimName"] == BACKUPS_CLAIM, at
        m.named(objects, "PersistentVolumeClaim", BACKUPS_CLAIM)


def test_the_restore_runs_only_by_hand_as_the_store_from_the_backups(built):
    for name, objects in with_postgres(built):
        cronjob = m.named(objects, "CronJob", "postgres-restore")
        at = f"{name}: {kustomize.describe(cronjob)}"
        assert cronjob["spec"]["suspend"] is True, at
        check_hardened(at, cronjob)
        container = only_container(cronjob)
        env = m.env(container)
        assert container["command"][-1] == "/etc/postgres-backup/restore.sh", at
        scripts = config_map(objects, mounted_volume(cronjob, container, container["command"][-1]))
        assert scripts["data"]["restore.sh"] == (FOLDER / "restore.sh").read_text(), at
        assert env["PGUSER"] == STORE_ROLE, at
        params = {"host": env["PGHOST"], "sslmode": env["PGSSLMODE"]}
        check_verifies_the_server(
            at, cronjob, container, {**params, "sslrootcert": env["PGSSLROOTCERT"]}
        )
        (mount,) = [v for v in container["volumeMounts"] if v["mountPath"] == env["BACKUP_DIR"]]
        assert mount["readOnly"] is True, at


def test_without_the_component_no_database_objects(built):
    for combination, objects in built.items():
        if combination.overlay == "root" or COMPONENT in combination.components:
            continue
        if COMPONENT in kustomize.overlay_components(combination.overlay):
            continue
        assert not m.of_kind(objects, "CronJob"), combination.name
        found = {(o["kind"], o["metadata"]["name"]) for o in objects}
        database = {
            ("StatefulSet", "postgres"),
            ("Certificate", TLS_SECRET),
            ("PersistentVolumeClaim", BACKUPS_CLAIM),
        }
        assert not database & found, combination.name
