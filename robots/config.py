"""Frozen, validated settings of the grasping world: camera, workspace, objects, randomization."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robots.names import RANDOMIZATIONS

# The paper's objects are 12-23 cm long; this gripper opens about 10 cm, so
# objects default to 8-15 cm: long, but pinchable across their width.
DEFAULT_SIZE_RANGE_M = (0.08, 0.15)
DENSITY_KG_M3 = 400.0
DOMAINS = ("sim", "proxy-real")
# What makes the proxy-real domain differ from sim, each switchable for the gap decomposition:
# "camera" (pose offset), "lighting" (light, colours of tray, arm and objects, the textured
# background), "sensor" (colour cast, gamma, noise, blur, JPEG) and "physics" (object mass
# and friction, grip force).
PROXY_REAL_FACTORS = ("camera", "lighting", "sensor", "physics")
PROFILES = {"default": (64, 64), "paper": (640, 512)}  # (width, height) of renders


@dataclass(frozen=True)
class CameraConfig:
    """The over-the-shoulder RGB camera; jitter is sampled anew every episode."""

    width: int = 64
    height: int = 64
    target: tuple[float, float, float] = (0.23, 0.2, 0.54)
    distance_m: float = 1.0
    yaw_deg: float = 245.0
    pitch_deg: float = -56.0
    fov_deg: float = 20.0
    jitter_deg: float = 3.0
    fov_jitter_deg: float = 2.0
    # Columns of the camera's own sensor. The proxy-real sensor adds its noise, blur and
    # JPEG artifacts at this resolution, and the frame is then resized to width x height,
    # as a real pipeline downsamples its camera; 0 degrades the frame at width x height.
    sensor_width: int = 0

    def __post_init__(self) -> None:
        if not (8 <= self.width <= 2048 and 8 <= self.height <= 2048):
            raise ValueError(
                f"camera size {self.width}x{self.height}: each side must be 8..2048 pixels"
            )
        if self.sensor_width and not self.width <= self.sensor_width <= 4096:
            raise ValueError(
                f"sensor_width={self.sensor_width}: use 0 (the image size) or "
                f"{self.width}..4096 columns, at least the image's width"
            )
        if self.jitter_deg < 0 or self.fov_jitter_deg < 0:
            raise ValueError("camera jitter must not be negative")

    @classmethod
    def for_profile(cls, profile: str) -> CameraConfig:
        """The camera of a named profile: "default" (64x64) or "paper" (640x512)."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
        width, height = PROFILES[profile]
        return cls(width=width, height=height)


# Grasps close in the lowest GRASP_BAND_M of the workspace: random exploration
# aims there, and so does the servo planner's CEM (its grasp_band_m setting).
GRASP_BAND_M = 0.03


@dataclass(frozen=True)
class Workspace:
    """Box the end effector (the arm's flange, link 7) stays in, metres, robot base frame.

    The default covers the tray's floor, where objects come to rest (the tray's
    centre +-14 cm, whatever its per-episode offset), and no more: every grasp
    target inside it can find an object, and exploration spends no episodes on
    the walls.
    """

    low: tuple[float, float, float] = (0.50, -0.065, 0.10)
    high: tuple[float, float, float] = (0.78, 0.215, 0.40)
    max_step_cm: float = 10.0

    def __post_init__(self) -> None:
        if (
            len(self.low) != 3
            or len(self.high) != 3
            or not all(a < b for a, b in zip(self.low, self.high, strict=True))
        ):
            raise ValueError(
                f"workspace low {self.low} must be below high {self.high} on x, y and z"
            )
        if self.max_step_cm <= 0:
            raise ValueError(f"max_step_cm={self.max_step_cm} must be positive")

    def clamp(self, position: np.ndarray) -> np.ndarray:
        """The position clamped into the workspace box."""
        return np.clip(position, self.low, self.high)

    def grasp_band(self) -> tuple[np.ndarray, np.ndarray]:
        """Corners (low, high) of the box where grasps close: the lowest GRASP_BAND_M."""
        low, high = np.array(self.low), np.array(self.high)
        return low, np.array([*high[:2], min(high[2], low[2] + GRASP_BAND_M)])


@dataclass(frozen=True)
class WorldConfig:
    """One grasping world.

    Attributes:
        domain: "sim" or "proxy-real" (a different appearance and physics; domain REAL).
        randomization: "none", "visual", "dynamics" or "all" (the paper's modes).
        object_set: An object pool ("train", "sim-test", "real-train", "real-test";
            robots.objects), "procedural"
            (generated on the fly), or a folder of URDF/mesh objects.
        objects_per_bin: Objects dropped into the tray each episode.
        object_size_range_m: Longest extent (low, high) that generated and mesh objects are
            scaled to; the upper end is bounded by what the open gripper can pinch.
        object_density_kg_m3: Density that gives generated and mesh objects their mass.
        motion_noise_cm: Std of the noise on horizontal motion commands (the paper: 1 cm in sim).
        seed: Seeds the world's own generator; episodes take seeds of their own.
        proxy_real_factors: Which of PROXY_REAL_FACTORS a proxy-real world applies (all by
            default). A subset isolates one part of the sim-to-real gap; the random draws
            are the same whatever the subset, so every subset sees the same scenes.
    """

    domain: str = "sim"
    randomization: str = "none"
    object_set: str = "train"
    objects_per_bin: int = 5
    object_size_range_m: tuple[float, float] = DEFAULT_SIZE_RANGE_M
    object_density_kg_m3: float = DENSITY_KG_M3
    camera: CameraConfig = field(default_factory=CameraConfig)
    workspace: Workspace = field(default_factory=Workspace)
    motion_noise_cm: float = 1.0
    lift_height_m: float = 0.1
    seed: int = 0
    proxy_real_factors: tuple[str, ...] = PROXY_REAL_FACTORS

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain {self.domain!r}; use one of {DOMAINS}")
        unknown = set(self.proxy_real_factors) - set(PROXY_REAL_FACTORS)
        if unknown:
            raise ValueError(
                f"proxy_real_factors {sorted(unknown)} unknown; use some of {PROXY_REAL_FACTORS}"
            )
        if self.randomization not in RANDOMIZATIONS:
            raise ValueError(f"randomization {self.randomization!r}; use one of {RANDOMIZATIONS}")
        if not 1 <= self.objects_per_bin <= 20:
            raise ValueError(f"objects_per_bin={self.objects_per_bin}; use 1..20")
        if self.motion_noise_cm < 0:
            raise ValueError("motion_noise_cm must not be negative")
        low, high = self.object_size_range_m
        if not 0.01 <= low <= high <= 0.3:
            raise ValueError(
                f"object_size_range_m={self.object_size_range_m}: need 0.01 <= low <= high <= 0.3"
            )
        if not self.object_density_kg_m3 > 0:
            raise ValueError(f"object_density_kg_m3={self.object_density_kg_m3} must be positive")


@dataclass(frozen=True)
class ArmConfig:
    """One arm of the fleet: its id, the driver that runs it, and its world."""

    id: str
    driver: str
    world: WorldConfig
    source: str = ""

    @property
    def domain(self) -> str:
        """Proxy-real and hardware arms produce REAL episodes; simulated ones SIM."""
        return (
            "sim"
            if self.driver == "sim"
            else "proxy-real"
            if self.driver == "proxy-real"
            else "real"
        )
