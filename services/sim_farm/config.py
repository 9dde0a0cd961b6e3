"""The sim-farm's settings."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, ServerConfig, check_address, setting


@dataclass(frozen=True)
class SimFarmConfig(ServerConfig):
    """Sim-farm: runs collections of simulated grasp attempts in worker processes."""

    port: int = setting(50052, "gRPC port; 0 picks a free one (see port_file).")
    store_address: str = setting("", "episode-store host:port.", required=True)
    planner_address: str = setting("", "servo-planner host:port, for CEM and ε-mix collection.")
    workers: int = setting(2, "Shards running at once (worker processes).")
    spool_dir: str = setting(
        "var/sim-farm/spool", "Where episodes wait while the store is unreachable."
    )
    spool_max_bytes: int = setting(
        2 * 1024**3,
        "Spool size (all shards together) at which workers pause until the store catches up.",
    )
    upload_stall_s: float = setting(
        300.0,
        "A shard fails when the store takes none of its spooled episodes for this long, seconds "
        "(the episodes stay spooled and are sent when the farm next starts).",
    )
    max_episodes: int = setting(1_000_000, "Largest collection accepted.")
    plan_timeout_s: float = setting(5.0, "Deadline of one PlanStep for CEM collection, seconds.")
    refiner_address: str = setting(
        "", "refiner host:port, for collections that transform images before planning (RCAN)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_address("store_address", self.store_address)
        if self.planner_address:
            check_address("planner_address", self.planner_address)
        if self.refiner_address:
            check_address("refiner_address", self.refiner_address)
        if self.workers < 1 or self.max_episodes < 1:
            raise ConfigError("workers and max_episodes must be at least 1")
        if self.spool_max_bytes < 1 or self.upload_stall_s <= 0:
            raise ConfigError(
                f"spool_max_bytes={self.spool_max_bytes} and upload_stall_s="
                f"{self.upload_stall_s} must be positive"
            )
