"""The proxy-real sensor degrades frames as a focused camera would, at its own resolution."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from robots.appearance import SensorModel
from robots.config import CameraConfig


def _worst_sensor(sensor_width: int) -> SensorModel:
    """The harshest draw of every degradation, with a neutral colour response."""
    sensor = SensorModel.sample(np.random.default_rng(1), 64, 64, sensor_width=sensor_width)
    return dataclasses.replace(
        sensor,
        blur_radius=1.0,
        jpeg_quality=35,
        noise_std=8.0,
        colour_gain=np.ones(3),
        brightness=1.0,
        gamma=1.0,
    )


def _contrast_kept(sensor: SensorModel) -> float:
    """Share of a 3-pixel object's contrast against the tray left after the sensor."""
    frame = np.full((64, 64, 3), 60, np.uint8)
    frame[30:33, 30:33] = 200  # a 7 cm object seen from the shoulder camera at 64x64
    scene = np.ones((64, 64), np.uint8)  # every pixel shows a body: no background swap
    kept = []
    for seed in range(5):
        out = sensor.apply(frame, scene, np.random.default_rng(seed)).astype(np.float64)
        kept.append((out[30:33, 30:33].mean() - out[:20, :20].mean()) / 140.0)
    return min(kept)


def test_a_small_object_keeps_its_contrast_through_a_4x_sensor_but_not_at_image_size():
    # Noise, blur and JPEG at 256 columns, then area-downsampled as a camera pipeline does.
    assert _contrast_kept(_worst_sensor(256)) > 0.8
    # The same degradations applied to the 64x64 frame itself wash half the object out.
    assert _contrast_kept(_worst_sensor(0)) < 0.6


def test_the_frame_keeps_its_size_and_type():
    sensor = _worst_sensor(256)
    frame = np.zeros((48, 64, 3), np.uint8)
    sensor = dataclasses.replace(sensor, background=np.zeros((48, 64, 3), np.uint8))
    out = sensor.apply(frame, np.zeros((48, 64), np.uint8), np.random.default_rng(0))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_a_sensor_smaller_than_the_image_is_refused():
    with pytest.raises(ValueError, match="sensor_width=32"):
        CameraConfig(width=64, height=64, sensor_width=32)


def test_the_sensor_resolution_does_not_move_the_physics():
    # The sensor's noise has its own stream: a frame of 256 columns takes 16 times the numbers
    # of one of 64, and the motion noise drawn after it must not care.
    from robots.inventory import load_arm
    from robots.world import GraspWorld

    arm = load_arm(Path(__file__).parents[2] / "robots" / "evaluation" / "proxy-real-test.yaml")
    moved = []
    for sensor_width in (0, 256):
        camera = dataclasses.replace(arm.world.camera, sensor_width=sensor_width)
        world = GraspWorld(dataclasses.replace(arm.world, domain="proxy-real", camera=camera))
        try:
            start = world.reset(seed=11)
            steps = []
            for _ in range(2):
                world.observe()
                steps.append(world.move(np.array([3.0, -2.0, -5.0, 0.0, 1.0])))
            moved.append((start.object_ids, np.round(np.concatenate(steps), 6).tolist()))
        finally:
            world.close()
    assert moved[0] == moved[1]
