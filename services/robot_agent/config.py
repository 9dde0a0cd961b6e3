"""The robot agent's settings."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, ServerConfig, check_address, setting

EXPLORATION = ("cem", "random", "eps-mix")


@dataclass(frozen=True)
class AgentConfig(ServerConfig):
    """Robot agent: runs one arm's grasp attempts, streams them to the store, keeps the arm safe."""

    port: int = setting(50054, "gRPC port of the agent's status API; 0 picks a free one.")
    robot_id: str = setting("", "Which arm of the inventory this agent drives.", required=True)
    inventory_dir: str = setting(
        "robots/fleet", "Folder of the fleet's arm files (one YAML per arm)."
    )
    planner_address: str = setting("", "servo-planner host:port.", required=True)
    store_address: str = setting("", "episode-store host:port.", required=True)
    auth_token: str = setting(
        "",
        "Bearer token Pause and Resume must send; empty disables authentication (logged loudly).",
    )
    exploration: str = setting(
        "cem", "cem, random or eps-mix (CEM with random commands at rate epsilon)."
    )
    epsilon: float = setting(0.1, "Share of random commands in eps-mix exploration.")
    model_name: str = setting(
        "grasp_success",
        "Grasp model the planner scores with (one trained on canonical images when canonicalizing).",
    )
    model_label: str = setting("stable", "Model label the planner scores with (stable, canary).")
    canonicalize: bool = setting(
        False, "RCAN: translate every image to the canonical style (through the refiner) first."
    )
    refiner_address: str = setting("", "refiner host:port, needed to canonicalize.")
    rcan_model_label: str = setting("stable", "RCAN model label the refiner translates with.")
    refine_timeout_s: float = setting(
        2.0, "Deadline of one Refine call; past it the arm stops, seconds."
    )
    spool_dir: str = setting(
        "var/agent-spool", "Episodes wait here until the store has them; a folder per robot."
    )
    spool_max_bytes: int = setting(
        4 * 1024**3,
        "Spool size (waiting and rejected episodes) at which the arm pauses collecting until "
        "the store has taken some; leave one episode of room below the disk's free space, "
        "bytes.",
    )
    max_steps: int = setting(8, "Most control steps in one grasp attempt.")
    episodes: int = setting(0, "Stop after this many episodes; 0 runs until SIGTERM.")
    plan_timeout_s: float = setting(
        2.0, "Deadline of one PlanStep; past it the arm stops, seconds."
    )
    safe_stop_retry_s: float = setting(
        1.0, "How often a safe-stopped agent checks whether the planner is back, seconds."
    )
    seed: int = setting(0, "Seeds the episode seeds (0: from the arm's inventory seed).")
    spool_drain_s: float = setting(
        10.0,
        "On shutdown, seconds the spooled episodes get to reach the store (keep it inside the "
        "pod's termination grace period); what is left stays on disk for the next start.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_address("planner_address", self.planner_address)
        check_address("store_address", self.store_address)
        if self.exploration not in EXPLORATION:
            raise ConfigError(f"exploration={self.exploration!r}; use one of {EXPLORATION}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"epsilon={self.epsilon}; expected 0..1")
        if self.canonicalize and not self.refiner_address:
            raise ConfigError(
                "canonicalize needs the refiner: set --refiner-address or GRASPFLEET_REFINER_ADDRESS"
            )
        if self.refiner_address:
            check_address("refiner_address", self.refiner_address)
        if not self.model_name:
            raise ConfigError("model_name must name the grasp model to plan with")
        if self.spool_max_bytes < 1:
            raise ConfigError(f"spool_max_bytes={self.spool_max_bytes} must be at least 1")
        if self.spool_drain_s < 0:
            raise ConfigError(f"spool_drain_s={self.spool_drain_s} must not be negative")
        if not 1 <= self.max_steps <= 50 or self.episodes < 0:
            raise ConfigError("max_steps must be 1..50 and episodes not negative")
