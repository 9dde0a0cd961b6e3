"""The simulated world, run for real in DIRECT mode with tiny budgets."""

from __future__ import annotations

import shutil

import numpy as np
import pybullet_data
import pytest

from robots import objects
from robots.config import Workspace, WorldConfig
from robots.episode import run_episode
from robots.grasp_plan import scan_tray
from robots.policies import OraclePolicy, RandomPolicy
from robots.world import MASK_ARM, MASK_OBJECT, MASK_TRAY, GraspWorld


@pytest.fixture(scope="module")
def world():
    with GraspWorld(WorldConfig(seed=1)) as w:
        yield w


def test_reset_gives_x0_without_the_arm_and_masks_of_every_class(world):
    start = world.reset(seed=11)
    assert start.x0.rgb.shape == (64, 64, 3) and start.x0.rgb.dtype == np.uint8
    assert MASK_ARM not in np.unique(start.x0.mask)
    assert {MASK_TRAY, MASK_OBJECT} <= set(np.unique(start.x0.mask))
    assert len(start.object_ids) == 5
    world.move(np.array([0.0, 0.0, -10.0, 0.0, 1.0]))
    assert MASK_ARM in np.unique(world.observe().mask)


def test_an_episode_replays_exactly_from_its_seed(world):
    first = run_episode(world, RandomPolicy(world), seed=77, max_steps=5)
    with GraspWorld(WorldConfig(seed=999)) as other:
        second = run_episode(other, RandomPolicy(other), seed=77, max_steps=5)
    assert first.success == second.success and first.object_ids == second.object_ids
    np.testing.assert_array_equal(first.x0.rgb, second.x0.rgb)
    for a, b in zip(first.steps, second.steps, strict=True):
        np.testing.assert_array_equal(a.observation.rgb, b.observation.rgb)
        np.testing.assert_allclose(a.action.motion, b.action.motion)


def test_a_new_world_replays_an_episode_after_another_world_closed():
    """PyBullet reuses client numbers: nothing per-client may outlive its world."""
    images = []
    for _ in range(2):
        with GraspWorld(WorldConfig(seed=1, randomization="visual")) as w:
            images.append(w.reset(seed=12).x0.rgb)
    np.testing.assert_array_equal(images[0], images[1])


def test_several_worlds_in_one_process_are_independent():
    with (
        GraspWorld(WorldConfig(seed=1)) as a,
        GraspWorld(WorldConfig(seed=2, object_set="procedural")) as b,
    ):
        a.reset(seed=5)
        b.reset(seed=5)
        a.move(np.array([0.0, 0.0, -10.0, 0.0, 1.0]))
        assert a.pose().position[2] < b.pose().position[2]
        assert a.sim._client != b.sim._client


def _empty_the_tray(world: GraspWorld) -> None:
    for body in world.body_ids:
        world.sim.removeBody(body)
    world.body_ids = []


def test_moves_are_clamped_to_the_workspace_and_the_step_limit(world):
    world.reset(seed=3)
    _empty_the_tray(world)
    before = world.pose().position
    applied = world.move(np.array([300.0, 0.0, 0.0, 0.0, 1.0]))
    assert np.linalg.norm(applied) <= world.config.workspace.max_step_cm + 1e-6
    for _ in range(10):
        world.move(np.array([0.0, 0.0, -50.0, 0.0, 1.0]))
    position = world.pose().position
    assert (position >= np.array(world.config.workspace.low) - 1e-9).all()
    assert position[2] == pytest.approx(world.config.workspace.low[2])
    assert before[2] > position[2]
    # At the workspace's floor the fingertips hover just above the tray's.
    gaps = [p[8] for p in world.sim.getClosestPoints(world.arm, world.tray, 0.02)]
    assert 0.0 < min(gaps) < 0.01


def test_the_gripper_stops_on_what_it_meets():
    with GraspWorld(WorldConfig(seed=1, motion_noise_cm=0.0)) as w:
        w.reset(seed=3)
        scan = scan_tray(w)
        yaw = w.pose().yaw
        # One finger right over the highest object point it can reach, then straight down.
        finger = w.fingertip_offset(yaw)[:2] + 0.069 * np.array([np.cos(yaw), np.sin(yaw)])
        low, high = (np.array(c[:2]) for c in (w.config.workspace.low, w.config.workspace.high))
        grid = np.stack(np.meshgrid(scan.xs, scan.ys, indexing="ij"), axis=-1)
        reachable = np.all((grid - finger >= low) & (grid - finger <= high), axis=-1)
        i, j = np.unravel_index(
            np.argmax(np.where(reachable, scan.height, -1.0)), scan.height.shape
        )
        top = grid[i, j]
        for _ in range(4):
            w.move(np.array([*(top - finger - w.pose().position[:2]) * 100, 0.0, 0.0, 1.0]))
        for _ in range(6):
            w.move(np.array([0.0, 0.0, -10.0, 0.0, 1.0]))
        assert w.pose().position[2] > w.config.workspace.low[2] + 0.01
        depths = [p[8] for b in w.body_ids for p in w.sim.getClosestPoints(w.arm, b, 0.0)]
        assert min(depths, default=0.0) >= -0.0025


def test_oracle_grasps_and_random_exploration_sometimes_does():
    """The labels are right and grasps are achievable: the privileged oracle mostly succeeds."""
    with GraspWorld(WorldConfig(seed=4)) as w:
        oracle = sum(
            run_episode(w, OraclePolicy(w), seed=500 + i, max_steps=8).success for i in range(10)
        )
        random = sum(
            run_episode(w, RandomPolicy(w), seed=600 + i, max_steps=8).success for i in range(10)
        )
    assert oracle >= 8, f"oracle succeeded {oracle}/10"
    assert random <= 6, f"random exploration succeeded {random}/10, suspiciously often"


def test_object_size_and_density_are_settings():
    config = WorldConfig(
        object_set="procedural", object_size_range_m=(0.05, 0.06), object_density_kg_m3=900.0
    )
    with GraspWorld(config) as w:
        specs = w.objects.sample(np.random.default_rng(3), 5)
    for spec in specs:
        assert 0.05 - 1e-9 <= objects._extent(list(spec.prisms)) <= 0.06 + 1e-9
        volume = sum(8 * np.prod(p.half_extents) for p in spec.prisms)
        assert spec.mass_kg == pytest.approx(volume * 900.0)
    with pytest.raises(ValueError, match="object_size_range_m"):
        WorldConfig(object_size_range_m=(0.2, 0.1))


def test_procedural_objects_have_the_configured_size_and_density():
    rng = np.random.default_rng(0)
    for spec in objects.ObjectSet("procedural").sample(rng, 20):
        assert (
            objects.DEFAULT_SIZE_RANGE_M[0] - 1e-9
            <= objects._extent(list(spec.prisms))
            <= objects.DEFAULT_SIZE_RANGE_M[1] + 1e-9
        )
        volume = sum(8 * np.prod(p.half_extents) for p in spec.prisms)
        assert spec.mass_kg == pytest.approx(volume * objects.DENSITY_KG_M3)


def test_a_folder_of_meshes_loads(tmp_path):
    for name in (
        "duck_vhacd.urdf",
        "duck_vhacd.obj",
        "duck.mtl",
        "duckCM.png",
        "cube_small.urdf",
        "cube.obj",
    ):
        shutil.copy(f"{pybullet_data.getDataPath()}/{name}", tmp_path / name)
    with GraspWorld(WorldConfig(seed=1, object_set=str(tmp_path), objects_per_bin=3)) as w:
        start = w.reset(seed=1)
        assert all(o.startswith("mesh:") for o in start.object_ids)
        assert MASK_OBJECT in np.unique(start.x0.mask)


def _dynamics(w: GraspWorld) -> list[tuple]:
    return [w.sim.getDynamicsInfo(b, -1)[:2] for b in w.body_ids]


def _appearance(look) -> tuple:
    return (
        look.tray_colour,
        look.tray_texture,
        look.arm_colour,
        tuple(look.light_direction),
        tuple(look.light_colour),
        look.ambient,
        look.diffuse,
    )


@pytest.mark.parametrize("mode", ["none", "visual", "dynamics", "all"])
def test_randomization_changes_what_it_should(mode):
    looks, dynamics = {}, {}
    for name in ("none", mode):
        with GraspWorld(WorldConfig(seed=1, randomization=name)) as w:
            w.reset(seed=21)
            looks[name], dynamics[name] = w.look, _dynamics(w)
    visual, physical = mode in ("visual", "all"), mode in ("dynamics", "all")
    assert looks[mode].visual == visual and looks[mode].dynamics == physical
    # Camera pose, bin location and background vary in every mode, the rest only when asked.
    assert (_appearance(looks[mode]) != _appearance(looks["none"])) == visual
    assert (dynamics[mode] != dynamics["none"]) == physical


def test_visual_randomization_varies_the_pixels_of_the_same_scene():
    means = []
    with GraspWorld(WorldConfig(seed=1, randomization="visual")) as w:
        for seed in range(4):
            start = w.reset(seed=30 + seed)
            means.append(start.x0.rgb[start.x0.mask == MASK_TRAY].mean(axis=0))
    assert np.ptp(np.array(means), axis=0).max() > 20  # the tray's colour changes


def test_proxy_real_looks_different_but_masks_still_align():
    with (
        GraspWorld(WorldConfig(seed=1)) as sim,
        GraspWorld(WorldConfig(seed=1, domain="proxy-real")) as real,
    ):
        s, r = sim.reset(seed=8), real.reset(seed=8)
    assert np.abs(s.x0.rgb.astype(int) - r.x0.rgb.astype(int)).mean() > 25
    # Same scene, camera moved: the tray is still where most of the image is.
    assert (r.x0.mask == MASK_TRAY).mean() > 0.2


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="randomization"):
        WorldConfig(randomization="weather")
    with pytest.raises(ValueError, match="low"):
        Workspace(low=(0.5, 0, 0), high=(0.4, 1, 1))
    with pytest.raises(ValueError, match="neither one of the pools .* 'procedural' nor a folder"):
        objects.ObjectSet("nonsense")


def test_an_episode_records_when_it_began_and_when_each_step_did(world):
    """The store's started_at and step times are the episode's own, not when it was stored."""
    import time

    from models.episodes.records import to_record

    before = time.time_ns()
    result = run_episode(world, RandomPolicy(world), seed=5, max_steps=4)
    record = to_record(
        result,
        episode_id="timed",
        robot_id="sim-01",
        domain="sim",
        randomization="none",
        policy="random",
        object_set="train",
    )
    started = record.header.started_at.ToNanoseconds()
    steps = [step.time.ToNanoseconds() for step in record.steps]
    ended = record.outcome.ended_at.ToNanoseconds()
    assert before <= started <= steps[0]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert steps[-1] < ended
