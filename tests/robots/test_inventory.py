"""The fleet inventory and the driver registry."""

from __future__ import annotations

import pytest

from robots.drivers import SimulatedDriver, make_driver
from robots.inventory import InventoryError, load_arm, load_inventory


def test_the_shipped_fleet_loads():
    arms = {arm.id: arm for arm in load_inventory()}
    assert {"kuka-01", "kuka-02", "sim-01"} <= set(arms)
    assert (
        arms["kuka-01"].domain == "proxy-real" and arms["kuka-01"].world.object_set == "real-train"
    )
    assert arms["sim-01"].domain == "sim"


def test_a_driver_is_a_context_manager():
    arm = load_inventory()[0]
    with make_driver(arm) as driver:
        assert isinstance(driver, SimulatedDriver)
        start = driver.reset(seed=2)
        assert start.x0.rgb.shape == (64, 64, 3)
        assert isinstance(driver.grasp(), bool)
    assert driver.world is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("driver: sim\n", "id is missing"),
        ("id: a\ndriver: warp\n", "driver 'warp' is unknown"),
        ("id: a\ndriver: sim\ncolour: red\n", "unknown field(s) ['colour']"),
        ("id: a\ndriver: sim\nworkspace: {low: [1, 0, 0], high: [0, 1, 1]}\n", "workspace low"),
        ("id: a\ndriver: sim\ncamera: {width: 2}\n", "camera size 2x64"),
        ("id: a\ndriver: sim\nrandomization: rain\n", "randomization 'rain'"),
        ("id: [\n", "not valid YAML"),
        ("id: a\ndriver: sim\nseed: many\n", "seed: 'many' is not an integer"),
        ("id: a\ndriver: sim\nobject_set: marbles\n", "object_set: object set 'marbles'"),
        ("id: a\ndriver: sim\nworkspace: {low: 5}\n", "workspace: low must be a list"),
        ("id: a\ndriver: sim\nobjects_per_bin: 0\n", "objects_per_bin: 0 objects"),
        ("id: a\ndriver: sim\ncamera: {zoom: 2}\n", "unknown camera field(s) ['zoom']"),
    ],
)
def test_bad_files_name_the_file_and_the_field(tmp_path, text, message):
    path = tmp_path / "arm.yaml"
    path.write_text(text)
    with pytest.raises(InventoryError) as refused:
        load_arm(path)
    assert str(path) in str(refused.value) and message in str(refused.value)


def test_duplicate_ids_are_refused(tmp_path):
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("id: kuka-07\ndriver: sim\n")
    with pytest.raises(InventoryError, match="already used by"):
        load_inventory(tmp_path)
