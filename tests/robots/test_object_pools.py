"""The object pools behind every sim-to-real number: disjoint, and used where they belong."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from robots import objects
from robots.inventory import load_inventory

PROXY_REAL_TEST_ARM = Path(__file__).parents[2] / "robots" / "evaluation" / "proxy-real-test.yaml"


def _files(pool: str) -> set[str]:
    return {str(Path(f).resolve()) for f in objects.pool_files(pool)}


def test_the_four_pools_are_disjoint_and_the_test_family_is_not_a_random_urdf():
    pools = {name: _files(name) for name in objects.POOLS}
    assert [len(pools[n]) for n in ("train", "sim-test", "real-train")] == [800, 100, 100]
    for (a, files_a), (b, files_b) in itertools.combinations(pools.items(), 2):
        assert not files_a & files_b, f"pools {a} and {b} share objects"
    assert all("random_urdfs" not in f for f in pools["real-test"])
    assert all(Path(f).is_file() for pool in pools.values() for f in pool)


@pytest.mark.parametrize("pool", objects.POOLS)
def test_sampled_ids_name_their_pool_and_stay_in_it(pool):
    rng = np.random.default_rng(1)
    stems = {Path(f).stem for f in objects.pool_files(pool)}
    ids = [s.object_id for _ in range(20) for s in objects.ObjectSet(pool).sample(rng, 5)]
    assert all(i.startswith(f"{pool}:") and i.split(":", 1)[1] in stems for i in ids)


def test_random_urdf_scenes_draw_from_one_bin_so_episodes_split_by_object():
    pool = objects.ObjectSet("train")
    rng = np.random.default_rng(2)
    for _ in range(50):
        numbers = {int(s.object_id.split(":")[1]) for s in pool.sample(rng, 5)}
        bins = {objects.pool_numbers("train").index(n) // objects.BIN_SIZE for n in numbers}
        assert len(bins) == 1


def test_the_retired_test_set_is_refused_with_what_to_use():
    with pytest.raises(ValueError, match="sim-test.*real-train.*real-test"):
        objects.ObjectSet("test")


def test_proxy_real_arms_train_on_real_train_and_the_evaluation_arm_grasps_real_test():
    from robots.inventory import load_arm

    real_arms = [a for a in load_inventory() if a.domain == "proxy-real"]
    assert real_arms and {a.world.object_set for a in real_arms} == {"real-train"}
    sim_arms = [a for a in load_inventory() if a.domain == "sim"]
    assert {a.world.object_set for a in sim_arms} <= {"train"}
    evaluation = load_arm(PROXY_REAL_TEST_ARM)
    assert evaluation.domain == "proxy-real" and evaluation.world.object_set == "real-test"
    # The in-family diagnostic differs from the evaluation arm in its objects alone.
    diagnostic = load_arm(PROXY_REAL_TEST_ARM.with_name("proxy-real-sim-test.yaml"))
    assert diagnostic.world.object_set == "sim-test" and diagnostic.world.objects_per_bin == 5
    assert (
        replace(
            diagnostic,
            id=evaluation.id,
            source=evaluation.source,
            world=replace(diagnostic.world, object_set="real-test", objects_per_bin=3),
        )
        == evaluation
    )


def test_meshes_are_centred_on_their_body():
    spec = objects.ObjectSet("real-test").sample(np.random.default_rng(0), 1)[0]
    low, high = objects.mesh_bounds(spec.path)
    centre = (low + high) / 2 * spec.mesh_scale
    assert np.allclose(np.add(centre, spec.mesh_offset), 0.0)
    size = (high - low).max() * spec.mesh_scale
    assert objects.REAL_TEST_SIZE_RANGE_M[0] - 1e-9 <= size <= objects.REAL_TEST_SIZE_RANGE_M[1]
