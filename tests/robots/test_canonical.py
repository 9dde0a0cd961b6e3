"""Canonical images (RCAN): the render's classes in flat colours, shaded by shape, blind to looks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pybullet
import pytest

from robots import canonical
from robots.config import WorldConfig
from robots.episode import run_episode
from robots.policies import RandomPolicy
from robots.world import MASK_ARM, MASK_OBJECT, MASK_TRAY, GraspWorld

DOWN = np.array([0.0, 0.0, -10.0, 0.0, 1.0])


@pytest.fixture(scope="module")
def visual_world():
    with GraspWorld(WorldConfig(seed=4, randomization="visual"), render_canonical=True) as world:
        yield world


def test_near_far_and_a_wall_facing_the_camera_is_lit_evenly():
    projection = pybullet.computeProjectionMatrixFOV(30.0, 1.0, 0.01, 10.0)
    near, far = canonical.near_far(projection)
    assert near == pytest.approx(0.01, rel=1e-4) and far == pytest.approx(10.0, rel=1e-3)
    # The depth buffer of a wall 2 m away, square to the optical axis.
    distance = 2.0
    depth = np.full((32, 32), (far - far * near / distance) / (far - near))
    points = canonical.camera_points(depth, projection)
    np.testing.assert_allclose(points[..., 2], -distance, rtol=1e-6)
    lit = canonical.shading(depth, projection)
    expected = canonical.AMBIENT + canonical.DIFFUSE * canonical.LIGHT_DIRECTION[2]
    np.testing.assert_allclose(lit, expected, atol=1e-6)


def test_canonical_pixels_are_the_mask_classes_of_the_same_frame(visual_world):
    start = visual_world.reset(seed=21)
    visual_world.move(DOWN)
    for observation in (start.x0, visual_world.observe()):
        image = observation.canonical
        assert image.shape == observation.rgb.shape and image.dtype == np.uint8
        np.testing.assert_array_equal(canonical.classes_of(image), observation.mask)
        for cls in np.unique(observation.mask):
            # One flat colour per class, only its brightness varies with the surface.
            pixels = image[observation.mask == cls].astype(np.float64)
            scale = pixels / canonical.PALETTE[cls]
            assert scale.min() >= canonical.AMBIENT - 0.02 and scale.max() <= 1.0 + 0.02
            assert np.ptp(scale, axis=1).max() < 0.05
    assert {MASK_TRAY, MASK_ARM, MASK_OBJECT} <= set(np.unique(observation.mask))


def test_shading_shows_the_shape_of_the_tray(visual_world):
    observation = visual_world.reset(seed=22).x0
    brightness = observation.canonical[observation.mask == MASK_TRAY].mean(axis=1)
    # The floor faces the light, the walls do not: a flat lookup would give a single value.
    assert brightness.max() - brightness.min() > 20


def test_canonical_ignores_colours_textures_and_light(visual_world):
    visual_world.reset(seed=23)
    visual_world.move(DOWN)
    before = visual_world.observe()
    look = visual_world.look
    sim = visual_world.sim
    # Another look of the same scene at the same instant: every visual factor redrawn.
    visual_world.look = dataclasses.replace(
        look, light_direction=[-2.0, -1.0, 0.5], light_colour=[0.5, 0.7, 1.2], ambient=0.2
    )
    sim.changeVisualShape(
        visual_world.tray, -1, rgbaColor=(0.1, 0.9, 0.2, 1), textureUniqueId=look.textures[0]
    )
    for link in range(-1, sim.getNumJoints(visual_world.arm)):
        sim.changeVisualShape(visual_world.arm, link, rgbaColor=(0.2, 0.2, 0.9, 1))
    for body in visual_world.body_ids:
        sim.changeVisualShape(body, -1, rgbaColor=(0.9, 0.1, 0.7, 1))
    after = visual_world.observe()
    assert np.abs(after.rgb.astype(int) - before.rgb.astype(int)).mean() > 20
    np.testing.assert_array_equal(after.canonical, before.canonical)


def test_proxy_real_sensor_noise_stays_out_of_the_canonical_image():
    config = WorldConfig(domain="proxy-real", seed=5)
    with GraspWorld(config, render_canonical=True) as world:
        world.reset(seed=24)
        first, second = world.observe(), world.observe()
    assert not np.array_equal(first.rgb, second.rgb)  # fresh noise every frame
    np.testing.assert_array_equal(first.canonical, second.canonical)
    np.testing.assert_array_equal(canonical.classes_of(first.canonical), first.mask)


def test_off_by_default_and_switching_it_on_changes_nothing_else():
    runs = {}
    for render in (False, True):
        with GraspWorld(WorldConfig(seed=6, randomization="all"), render_canonical=render) as w:
            runs[render] = run_episode(w, RandomPolicy(w), seed=31, max_steps=3)
    assert runs[False].x0.canonical is None
    assert all(s.observation.canonical is None for s in runs[False].steps)
    assert runs[True].x0.canonical is not None
    assert runs[True].success == runs[False].success
    for plain, with_canonical in zip(runs[False].steps, runs[True].steps, strict=True):
        np.testing.assert_array_equal(plain.observation.rgb, with_canonical.observation.rgb)
        assert with_canonical.observation.canonical.shape == plain.observation.rgb.shape


def test_render_refuses_mismatched_buffers():
    projection = pybullet.computeProjectionMatrixFOV(30.0, 1.0, 0.01, 10.0)
    with pytest.raises(ValueError, match="one shape"):
        canonical.render(np.zeros((8, 8), np.uint8), np.zeros((8, 9)), projection)
    with pytest.raises(ValueError, match="no colour"):
        canonical.render(np.full((8, 8), 7, np.uint8), np.zeros((8, 8)), projection)
