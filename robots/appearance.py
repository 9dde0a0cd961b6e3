"""The proxy-real camera: what a real sensor adds to a clean render, seeded per episode.

Backgrounds with photographic-like texture, a colour cast, other lighting,
sensor noise, blur and JPEG compression artifacts: enough that a model trained
on clean renders meets a measurable domain gap, as with a real arm. Noise, blur
and JPEG happen at the camera's own resolution (`sensor_width`); the frame is
then resized to the model's input, as a real pipeline downsamples its camera.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

BACKGROUND = 0  # segmentation class of pixels that show no body


@dataclass(frozen=True)
class SensorModel:
    """One episode's sensor: drawn once, applied to every frame so x0 and xt match."""

    colour_gain: np.ndarray  # [3] per-channel gain: colour cast
    brightness: float
    gamma: float
    noise_std: float  # in 0..255 units, per sensor pixel
    blur_radius: float  # Gaussian sigma in sensor pixels: a focused lens, a pixel or so
    jpeg_quality: int
    background: np.ndarray  # [H, W, 3] uint8 texture behind the scene
    sensor_scale: int = 1  # sensor columns per image column
    replace_background: bool = True  # the textured background (part of the scene's look)
    degrade: bool = True  # colour cast, gamma, noise, blur and JPEG (the sensor proper)

    @classmethod
    def sample(
        cls,
        rng: np.random.Generator,
        height: int,
        width: int,
        *,
        sensor_width: int = 0,
        background: bool = True,
        degrade: bool = True,
    ) -> SensorModel:
        """One episode's sensor; the draws are the same whichever parts apply.

        Args:
            rng: The episode's generator.
            height: Image rows.
            width: Image columns.
            sensor_width: The camera's own columns (0: the image's); rounded to a whole
                multiple of `width`.
            background: Put the textured background behind the scene.
            degrade: Apply the colour cast, gamma, noise, blur and JPEG artifacts.
        """
        return cls(
            colour_gain=rng.uniform([1.0, 0.85, 0.7], [1.2, 1.0, 0.9]),
            brightness=float(rng.uniform(0.75, 1.05)),
            gamma=float(rng.uniform(0.8, 1.2)),
            noise_std=float(rng.uniform(3.0, 8.0)),
            blur_radius=float(rng.uniform(0.4, 1.0)),
            jpeg_quality=int(rng.integers(35, 70)),
            background=textured_background(rng, height, width),
            replace_background=background,
            degrade=degrade,
            sensor_scale=max(1, round(sensor_width / width)) if sensor_width else 1,
        )

    def apply(self, rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The frame as the proxy-real sensor would deliver it (mask: class ids of the render).

        `rng` is the sensor's own stream (the world's `sensor_rng`), not the episode's.
        """
        height, width = rgb.shape[:2]
        scale = self.sensor_scale
        image = rgb.astype(np.float32)
        if self.replace_background:
            image[mask == BACKGROUND] = self.background[mask == BACKGROUND]
        # Drawn even when unused: a frame's noise does not depend on which parts apply.
        noise = rng.normal(0.0, self.noise_std, (height * scale, width * scale, 3))
        if not self.degrade:
            return np.clip(image, 0, 255).astype(np.uint8)
        image = (
            255.0
            * (np.clip(image * self.colour_gain * self.brightness, 0, 255) / 255.0) ** self.gamma
        )
        pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
        if scale > 1:
            pil = pil.resize((width * scale, height * scale), Image.BICUBIC)
        pil = Image.fromarray(np.clip(np.asarray(pil, np.float32) + noise, 0, 255).astype(np.uint8))
        pil = pil.filter(ImageFilter.GaussianBlur(self.blur_radius))
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=self.jpeg_quality)
        pil = Image.open(buffer).convert("RGB")
        if scale > 1:
            pil = pil.resize((width, height), Image.BOX)  # the pipeline's area downsampling
        return np.asarray(pil)


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth multi-scale noise in a random earthy palette, like a floor or workshop wall."""
    texture = np.zeros((height, width), np.float32)
    for cells, weight in ((4, 0.5), (12, 0.3), (40, 0.2)):
        coarse = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
        texture += (
            weight
            * np.asarray(
                Image.fromarray((coarse * 255).astype(np.uint8)).resize(
                    (width, height), Image.BICUBIC
                ),
                np.float32,
            )
            / 255.0
        )
    low, high = rng.uniform(20, 110, 3), rng.uniform(120, 230, 3)
    return (low + texture[..., None] * (high - low)).astype(np.uint8)
