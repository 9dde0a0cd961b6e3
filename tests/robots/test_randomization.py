"""Visual randomization and the proxy-real camera draw from different texture families."""

from __future__ import annotations

import numpy as np
import pybullet
import pytest
from PIL import Image
from pybullet_utils import bullet_client

from robots import appearance, randomization


def _colours(image: np.ndarray) -> int:
    return len(np.unique(image.reshape(-1, 3), axis=0))


def test_randomization_textures_are_two_colour_patterns_unlike_proxy_real_backgrounds():
    sim = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
    try:
        ids = randomization.load_textures(sim)
    finally:
        sim.disconnect()
    assert len(ids) == randomization.NUM_TEXTURES
    textures = [
        np.asarray(Image.open(path).convert("RGB")) for path in randomization._TEXTURE_FILES
    ]
    rng = np.random.default_rng(0)
    backgrounds = [appearance.textured_background(rng, 64, 64) for _ in range(20)]
    # A pattern is two flat colours; the proxy-real backgrounds are continuous noise.
    assert all(_colours(t) <= 2 for t in textures)
    assert all(_colours(b) > 100 for b in backgrounds)
    # And vivid where the backgrounds are earthy: some channel near full, another near zero.
    for texture in textures:
        for colour in np.unique(texture.reshape(-1, 3), axis=0):
            assert colour.max() >= 200 and colour.min() <= 60
    assert max(int(b.reshape(-1, 3).max(axis=0).min()) for b in backgrounds) < 240


def test_a_pattern_is_drawn_from_its_generator_alone():
    first = randomization.pattern_texture(np.random.default_rng(5), 32, 48)
    again = randomization.pattern_texture(np.random.default_rng(5), 32, 48)
    assert first.shape == (32, 48, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)


def test_proxy_real_factors_switch_alone_and_every_subset_sees_the_same_scene():
    from dataclasses import replace

    from robots.config import PROXY_REAL_FACTORS, WorldConfig
    from robots.world import GraspWorld

    base = WorldConfig(domain="proxy-real", object_set="real-test", objects_per_bin=3)
    starts = {}
    for factors in [(), *[(f,) for f in PROXY_REAL_FACTORS], PROXY_REAL_FACTORS]:
        with GraspWorld(replace(base, proxy_real_factors=factors)) as world:
            start = world.reset(17)
            starts[factors] = (
                start,
                world.object_poses(),
                world.pose().position,
                world.look.grip_force,
            )
    reference, poses, arm, _ = starts[()]
    for factors, (start, other_poses, other_arm, grip) in starts.items():
        assert start.object_ids == reference.object_ids
        assert np.allclose(other_arm, arm)
        if "physics" not in factors:  # the objects settle the same way under the same physics
            for (p, _), (q, _) in zip(poses, other_poses, strict=True):
                assert np.allclose(p, q, atol=1e-6)
        assert grip == (25.0 if "physics" in factors else 30.0)
        changed = not np.array_equal(start.x0.rgb, reference.x0.rgb)
        if factors != ("physics",):  # physics alone moves objects a little as they settle
            assert changed == (factors != ()), factors
    with pytest.raises(ValueError, match="proxy_real_factors"):
        WorldConfig(proxy_real_factors=("weather",))
