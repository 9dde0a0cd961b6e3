"""The episode store's settings."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, ServerConfig, setting


@dataclass(frozen=True)
class EpisodeStoreConfig(ServerConfig):
    """Episode store: ingest, labels and queries over SQLite or PostgreSQL plus TFRecord shards."""

    port: int = setting(50051, "gRPC port; 0 picks a free one (see port_file).")
    data_dir: str = setting(
        "var/episode-store", "Folder for shards (and the SQLite file when no DSN is set)."
    )
    postgres_dsn: str = setting(
        "", "PostgreSQL DSN for the metadata; SQLite in data_dir when empty."
    )
    max_steps: int = setting(1000, "Most steps one episode may have.")
    max_image_side: int = setting(4096, "Largest image width or height accepted, pixels.")
    max_episode_bytes: int = setting(
        256 * 1024 * 1024, "Largest episode accepted, bytes over all its messages."
    )
    max_concurrent_writes: int = setting(
        16, "WriteEpisode streams handled at once; more wait, then get RESOURCE_EXHAUSTED."
    )
    write_queue_timeout_s: float = setting(
        10.0, "How long a WriteEpisode waits for a write slot, seconds."
    )
    orphan_age_s: float = setting(
        600.0,
        "Age after which a shard without metadata is indexed (or quarantined) and a staging "
        "file deleted, seconds.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data_dir:
            raise ConfigError("data_dir is required: set --data-dir or GRASPFLEET_DATA_DIR")
        for name in ("max_steps", "max_image_side", "max_episode_bytes", "max_concurrent_writes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.write_queue_timeout_s < 0 or self.orphan_age_s < 0:
            raise ConfigError("write_queue_timeout_s and orphan_age_s must not be negative")
