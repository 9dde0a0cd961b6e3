"""One episode's look and physics: the paper's randomization modes and the proxy-real domain.

Always varied (the paper's "none"): camera pose, bin location, background.
"visual": tray texture, object colour and texture, arm colour, light direction
and brightness. Its textures are a family of their own (saturated geometric
patterns: stripes, checks, dots), never the proxy-real backgrounds' earthy
noise (robots.appearance): a model trained with randomization must not have
seen the test domain's textures. "dynamics": object mass and lateral, rolling and spinning
friction. "all": both. The proxy-real domain has its own fixed camera offset,
lighting and physics, and a sensor model (appearance.SensorModel).
"""

from __future__ import annotations

import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from robots import appearance
from robots.config import WorldConfig

SIM_BACKGROUND = (0.75, 0.75, 0.72)
TRAY_COLOUR = (0.55, 0.55, 0.55, 1.0)
ARM_COLOUR = (1.0, 0.5, 0.1, 1.0)
NUM_TEXTURES = 6
PATTERNS = ("stripes", "checks", "dots")
_TEXTURE_FILES: list[str] = []  # written once per process, loaded into every client that asks
_TEXTURE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Camera:
    """The camera's PyBullet view and projection matrices for one episode."""

    view_matrix: tuple
    projection_matrix: tuple


@dataclass(frozen=True)
class EpisodeLook:
    """Everything drawn for one episode's appearance and physics (randomization.draw_look)."""

    camera: Camera
    tray_offset: np.ndarray
    background: tuple
    tray_colour: tuple
    tray_texture: int
    arm_colour: tuple
    light_direction: list
    light_colour: list
    ambient: float
    diffuse: float
    visual: bool
    dynamics: bool
    proxy_real: bool  # the proxy-real domain, whichever of its factors apply
    grip_force: float
    sensor: appearance.SensorModel | None
    textures: tuple[int, ...] = ()  # this world's texture ids, for the objects
    factors: frozenset = frozenset()  # the proxy-real factors applied (config.PROXY_REAL_FACTORS)

    def apply_scene(self, sim, tray: int, arm: int, plane: int, table: int) -> None:
        """Colours the background, the table, the tray and the arm for this episode."""
        for body in (plane, table):
            sim.changeVisualShape(body, -1, rgbaColor=self.background)
        sim.changeVisualShape(
            tray, -1, rgbaColor=self.tray_colour, textureUniqueId=self.tray_texture
        )
        for link in range(-1, sim.getNumJoints(arm)):
            sim.changeVisualShape(arm, link, rgbaColor=self.arm_colour)

    def apply_object(self, sim, body: int, rng: np.random.Generator) -> None:
        """Gives one object its colour, texture and physics for this episode, drawing from `rng`."""
        if self.visual:
            colour = (*rng.uniform(0.05, 1.0, 3), 1.0)
            textures = self.textures
            texture = int(rng.choice(textures)) if textures and rng.random() < 0.5 else -1
            sim.changeVisualShape(body, -1, rgbaColor=colour, textureUniqueId=texture)
        elif self.proxy_real:
            # Drawn whether or not lighting applies: every factor subset sees the same scenes.
            colour = (*rng.uniform(0.2, 0.9, 3), 1.0)
            if "lighting" in self.factors:
                sim.changeVisualShape(body, -1, rgbaColor=colour)
        if self.dynamics:
            mass = sim.getDynamicsInfo(body, -1)[0]
            sim.changeDynamics(
                body,
                -1,
                mass=mass * rng.uniform(0.5, 2.0),
                lateralFriction=rng.uniform(0.4, 1.2),
                rollingFriction=rng.uniform(0.0, 0.01),
                spinningFriction=rng.uniform(0.0, 0.01),
            )
        elif "physics" in self.factors:
            # The proxy-real world's own physics: slipperier and heavier than the default sim.
            mass = sim.getDynamicsInfo(body, -1)[0]
            sim.changeDynamics(
                body, -1, mass=mass * 1.3, lateralFriction=0.6, spinningFriction=0.003
            )


def pattern_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A visual-randomization texture: a saturated two-colour geometric pattern.

    Args:
        rng: Draws the pattern, its scale, angle and colours.
        height: Rows of the texture.
        width: Columns of the texture.

    Returns:
        [height, width, 3] uint8.
    """
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    period = rng.uniform(4.0, 16.0)
    angle = rng.uniform(0.0, math.pi)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    u = cols * math.cos(angle) + rows * math.sin(angle)
    v = -cols * math.sin(angle) + rows * math.cos(angle)
    if pattern == "stripes":
        on = np.floor(u / period) % 2 == 0
    elif pattern == "checks":
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:
        du, dv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
        on = du**2 + dv**2 < 0.09
    colours = [_saturated(rng) for _ in range(2)]
    return np.where(on[..., None], colours[0], colours[1]).astype(np.uint8)


def _saturated(rng: np.random.Generator) -> np.ndarray:
    """A vivid colour: one channel high, one low, one anywhere."""
    channels = rng.permutation(3)
    colour = np.empty(3)
    colour[channels[0]] = rng.uniform(200, 255)
    colour[channels[1]] = rng.uniform(0, 60)
    colour[channels[2]] = rng.uniform(0, 255)
    return colour


def load_textures(sim) -> tuple[int, ...]:
    """Loads the procedural textures into one physics client; the world keeps the ids.

    The ids belong to the client: PyBullet reuses client numbers after a
    disconnect, so they must never be cached by client number.
    """
    with _TEXTURE_LOCK:
        if not _TEXTURE_FILES:
            rng = np.random.default_rng(12345)  # the same textures in every process
            folder = Path(tempfile.mkdtemp(prefix="graspfleet-textures-"))
            for i in range(NUM_TEXTURES):
                path = folder / f"texture-{i}.png"
                Image.fromarray(pattern_texture(rng, 64, 64)).save(path)
                _TEXTURE_FILES.append(str(path))
    return tuple(sim.loadTexture(path) for path in _TEXTURE_FILES)


def _camera(sim, config: WorldConfig, rng: np.random.Generator, offset_pose: bool) -> Camera:
    c = config.camera
    offset = (6.0, 4.0, 0.05) if offset_pose else (0.0, 0.0, 0.0)  # the real camera sits elsewhere
    yaw = c.yaw_deg + offset[0] + rng.uniform(-c.jitter_deg, c.jitter_deg)
    pitch = c.pitch_deg + offset[1] + rng.uniform(-c.jitter_deg, c.jitter_deg)
    distance = c.distance_m + offset[2]
    fov = c.fov_deg + rng.uniform(-c.fov_jitter_deg, c.fov_jitter_deg)
    view = sim.computeViewMatrixFromYawPitchRoll(list(c.target), distance, yaw, pitch, 0.0, 2)
    projection = sim.computeProjectionMatrixFOV(fov, c.width / c.height, 0.01, 10.0)
    return Camera(view_matrix=view, projection_matrix=projection)


def draw_look(
    rng: np.random.Generator, config: WorldConfig, sim, textures: tuple[int, ...]
) -> EpisodeLook:
    """Draws everything random about one episode's appearance and physics.

    Args:
        rng: The episode's generator.
        config: The world's settings.
        sim: The world's physics client.
        textures: Texture ids loaded into `sim` (load_textures).
    """
    proxy_real = config.domain == "proxy-real"
    factors = frozenset(config.proxy_real_factors if proxy_real else ())
    visual = config.randomization in ("visual", "all")
    dynamics = config.randomization in ("dynamics", "all")
    camera = _camera(sim, config, rng, "camera" in factors)
    tray_offset = np.array([rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), 0.0])
    background = (*np.clip(np.array(SIM_BACKGROUND) + rng.uniform(-0.15, 0.15, 3), 0, 1), 1.0)
    tray_colour, tray_texture, arm_colour = TRAY_COLOUR, -1, ARM_COLOUR
    light_direction, light_colour, ambient, diffuse = [1.0, 1.0, 2.0], [1.0, 1.0, 1.0], 0.6, 0.4
    if visual:
        tray_colour = (*rng.uniform(0.2, 0.9, 3), 1.0)
        tray_texture = int(rng.choice(textures)) if rng.random() < 0.7 else -1
        arm_colour = (*rng.uniform(0.1, 1.0, 3), 1.0)
        angle = rng.uniform(0, 2 * math.pi)
        light_direction = [math.cos(angle), math.sin(angle), rng.uniform(0.5, 3.0)]
        brightness = rng.uniform(0.6, 1.3)
        light_colour = [brightness] * 3
        ambient, diffuse = rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.7)
    if "lighting" in factors:
        # Low, warm side light with hard shadows; a worn grey tray and a white-and-grey arm.
        light_direction, light_colour = [-1.5, 0.6, 1.0], [1.1, 0.95, 0.8]
        ambient, diffuse = 0.35, 0.75
        tray_colour, arm_colour = (0.35, 0.33, 0.3, 1.0), (0.85, 0.85, 0.88, 1.0)
    sensor = None
    if proxy_real:
        sensor = appearance.SensorModel.sample(
            rng,
            config.camera.height,
            config.camera.width,
            sensor_width=config.camera.sensor_width,
            background="lighting" in factors,
            degrade="sensor" in factors,
        )
    return EpisodeLook(
        camera=camera,
        tray_offset=tray_offset,
        background=background,
        tray_colour=tray_colour,
        tray_texture=tray_texture,
        arm_colour=arm_colour,
        light_direction=light_direction,
        light_colour=light_colour,
        ambient=float(ambient),
        diffuse=float(diffuse),
        visual=visual,
        dynamics=dynamics,
        proxy_real=proxy_real,
        grip_force=25.0 if "physics" in factors else 30.0,
        sensor=sensor,
        textures=textures,
        factors=factors,
    )
