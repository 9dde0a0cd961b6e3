"""The episode store's settings."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, ServerConfig, setting

# Room a GetEpisode response needs beside the episode's own bytes (summary, label history).
GET_EPISODE_HEADROOM_BYTES = 1024 * 1024


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
        0,
        "Largest episode accepted, bytes over all its messages; at most max_message_bytes less "
        "1 MiB (what 0 means), so that GetEpisode can return every episode it stored.",
    )
    max_concurrent_writes: int = setting(
        8,
        "WriteEpisode streams received at once; more get RESOURCE_EXHAUSTED at once, with a "
        "retry hint. Below max_workers, so health checks and reads always find a thread.",
    )
    write_idle_timeout_s: float = setting(
        30.0,
        "A WriteEpisode stream that sends no message for this long is ended with ABORTED "
        "(nothing stored; the client sends the episode again), so idle clients cannot keep "
        "the write slots, seconds.",
    )
    write_timeout_s: float = setting(
        300.0,
        "A WriteEpisode stream still open after this long is ended with ABORTED, however "
        "steadily it trickles messages: no client holds a write slot for longer, seconds.",
    )
    max_inflight_bytes: int = setting(
        1024 * 1024 * 1024,
        "Memory the episodes being received may take at most (max_concurrent_writes x "
        "max_episode_bytes must fit in it; keep it well under the pod's memory limit), bytes.",
    )
    health_check_period_s: float = setting(
        5.0,
        "Seconds between readiness checks of the metadata database and the shard folder "
        "(NOT_SERVING while one fails); a check that takes longer fails.",
    )
    auth_token: str = setting(
        "",
        "Bearer token Relabel (it changes training labels) must send; empty disables "
        "authentication (logged loudly).",
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
        for name in ("max_steps", "max_image_side", "max_concurrent_writes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.max_episode_bytes < 0:
            raise ConfigError(f"max_episode_bytes={self.max_episode_bytes} must not be negative")
        if self.max_concurrent_writes >= self.max_workers:
            raise ConfigError(
                f"max_concurrent_writes={self.max_concurrent_writes} must be below "
                f"max_workers={self.max_workers}: idle or slow uploads would take every thread, "
                "and health checks and reads would time out"
            )
        if min(self.write_idle_timeout_s, self.write_timeout_s, self.health_check_period_s) <= 0:
            raise ConfigError(
                "write_idle_timeout_s, write_timeout_s and health_check_period_s must be positive"
            )
        if self.episode_bytes_limit > self.max_message_bytes - GET_EPISODE_HEADROOM_BYTES:
            raise ConfigError(
                f"max_episode_bytes={self.max_episode_bytes} leaves no room in "
                f"max_message_bytes={self.max_message_bytes}: GetEpisode could not return such "
                f"an episode; keep it at most max_message_bytes - {GET_EPISODE_HEADROOM_BYTES}"
            )
        if self.max_concurrent_writes * self.episode_bytes_limit > self.max_inflight_bytes:
            raise ConfigError(
                f"max_concurrent_writes={self.max_concurrent_writes} x max_episode_bytes="
                f"{self.episode_bytes_limit} exceeds max_inflight_bytes={self.max_inflight_bytes}: "
                "that many large uploads at once could run the store out of memory"
            )
        if self.orphan_age_s < 0:
            raise ConfigError(f"orphan_age_s={self.orphan_age_s} must not be negative")

    @property
    def episode_bytes_limit(self) -> int:
        """The largest episode accepted: max_episode_bytes, or what fits a GetEpisode answer."""
        return self.max_episode_bytes or self.max_message_bytes - GET_EPISODE_HEADROOM_BYTES
