"""The store's readiness follows its shard volume and its metadata database; liveness does not."""

from __future__ import annotations

import psycopg
from prometheus_client import REGISTRY

from services.common.server import LIVENESS
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import SERVICE_NAME, create_server
from tests.fixtures.health import NOT_SERVING, SERVING, health, readiness
from tests.fixtures.waiting import until


def _ready_gauge() -> float | None:
    return REGISTRY.get_sample_value("graspfleet_service_ready", {"service": "episode-store"})


def _store(data_dir, **settings):
    return create_server(
        EpisodeStoreConfig(
            port=0, data_dir=str(data_dir), health_check_period_s=0.2, grace_s=0, **settings
        )
    )


def test_not_ready_while_the_shard_folder_is_gone_then_ready_again(tmp_path):
    server = _store(tmp_path / "store")
    shards, away = tmp_path / "store" / "shards", tmp_path / "shards-away"
    try:
        assert readiness(server.address, SERVICE_NAME) == {SERVING} and _ready_gauge() == 1
        shards.rename(away)  # the volume unmounted, or someone removed the folder
        assert until(lambda: readiness(server.address, SERVICE_NAME) == {NOT_SERVING}, 60)
        assert health(server.address, LIVENESS) == SERVING  # alive: no reason to restart it
        assert _ready_gauge() == 0
        away.rename(shards)
        assert until(lambda: readiness(server.address, SERVICE_NAME) == {SERVING}, 60)
        assert _ready_gauge() == 1
    finally:
        server.stop(grace_s=0)


def test_not_ready_while_the_metadata_database_refuses_connections(postgres_database, tmp_path):
    dbname = psycopg.conninfo.conninfo_to_dict(postgres_database)["dbname"]
    admin_dsn = psycopg.conninfo.make_conninfo(postgres_database, dbname="postgres")

    def allow_connections(allowed: bool) -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}'
            )
            if not allowed:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (dbname,),
                )

    server = _store(tmp_path / "store", postgres_dsn=postgres_database)
    try:
        assert readiness(server.address, SERVICE_NAME) == {SERVING}
        allow_connections(False)  # the database down, or its credentials revoked
        assert until(lambda: readiness(server.address, SERVICE_NAME) == {NOT_SERVING}, 60)
        assert health(server.address, LIVENESS) == SERVING
        allow_connections(True)
        assert until(lambda: readiness(server.address, SERVICE_NAME) == {SERVING}, 60)
    finally:
        allow_connections(True)
        server.stop(grace_s=0)
