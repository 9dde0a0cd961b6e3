"""The servo-planner's settings."""

from __future__ import annotations

from dataclasses import dataclass

from robots.config import GRASP_BAND_M
from services.common.config import ConfigError, ServerConfig, check_address, setting


@dataclass(frozen=True)
class PlannerConfig(ServerConfig):
    """Servo-planner: chooses each arm's next command with CEM over the grasp predictor."""

    port: int = setting(50053, "gRPC port; 0 picks a free one (see port_file).")
    predictor_address: str = setting("", "grasp-predictor host:port.", required=True)
    predictor_plaintext: bool = setting(
        False,
        "Dial the predictor without TLS even when GRASPFLEET_TLS_CA is set: TensorFlow Serving "
        "as the predictor (the tensorflow-serving component) serves plaintext.",
    )
    model_name: str = setting("grasp_success", "Model the predictor scores with.")
    default_label: str = setting("stable", "Model label used when a request names no model.")
    population: int = setting(64, "CEM samples per iteration (Levine et al.: 64).")
    elites: int = setting(6, "CEM samples refitted each iteration (Levine et al.: 6).")
    iterations: int = setting(3, "CEM iterations (Levine et al.: 3).")
    close_ratio: float = setting(0.9, "Close when C(no motion) >= close_ratio * C(best motion).")
    raise_ratio: float = setting(
        0.5, "Move with the gripper raised when C(no motion) < raise_ratio * C(best motion)."
    )
    close_height_m: float = setting(
        0.04, "Close only when the gripper is within this height of the workspace floor, metres."
    )
    max_yaw_rad: float = setting(
        1.5708,
        "Largest rotation a candidate may ask for, radians (a pinch grasp is symmetric at pi).",
    )
    grasp_band_m: float = setting(
        GRASP_BAND_M,
        "CEM grasp targets lie within this height of the workspace floor, metres (where "
        "training grasps closed).",
    )
    budget_ms: int = setting(500, "Planning time per step when a request sets none, milliseconds.")
    max_budget_ms: int = setting(
        30000,
        "Largest planning time a request may ask for, milliseconds: each plan holds one of the "
        "server's threads while it runs (closed-loop evaluations plan with 30 s budgets).",
    )
    max_image_side: int = setting(1024, "Largest image side accepted, pixels.")
    health_check_period_s: float = setting(
        5.0,
        "Seconds between readiness checks that the grasp-predictor answers (NOT_SERVING while "
        "none does); a check that takes longer fails.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_address("predictor_address", self.predictor_address)
        if not 1 <= self.elites <= self.population:
            raise ConfigError(
                f"elites={self.elites} must be between 1 and population={self.population}"
            )
        if self.grasp_band_m <= 0:
            raise ConfigError(f"grasp_band_m={self.grasp_band_m} must be positive")
        if self.iterations < 1 or self.budget_ms < 1:
            raise ConfigError("iterations and budget_ms must be at least 1")
        if self.max_budget_ms < self.budget_ms:
            raise ConfigError(
                f"max_budget_ms={self.max_budget_ms} must be at least budget_ms={self.budget_ms}"
            )
        if self.health_check_period_s <= 0:
            raise ConfigError(
                f"health_check_period_s={self.health_check_period_s} must be positive"
            )
        if not 0 < self.raise_ratio <= self.close_ratio <= 1:
            raise ConfigError("need 0 < raise_ratio <= close_ratio <= 1")
