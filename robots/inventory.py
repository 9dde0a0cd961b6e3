"""The fleet inventory: one YAML file per arm in robots/fleet/, validated on load.

Example (robots/fleet/kuka-01.yaml):

    id: kuka-01
    driver: proxy-real          # sim | proxy-real | a registered hardware driver
    camera: {width: 64, height: 64, jitter_deg: 3, sensor_width: 256}  # sensor_width: proxy-real
    workspace: {low: [0.50, -0.065, 0.10], high: [0.78, 0.215, 0.40], max_step_cm: 10}
    object_set: real-train      # train | sim-test | real-train | real-test | procedural | a folder
    randomization: none         # none | visual | dynamics | all (simulated arms)
    seed: 1
    proxy_real_factors: [camera, lighting, sensor, physics]   # proxy-real arms; default all
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import yaml

from robots.config import (
    DEFAULT_SIZE_RANGE_M,
    PROXY_REAL_FACTORS,
    ArmConfig,
    CameraConfig,
    WorldConfig,
)
from robots.config import Workspace as WorkspaceConfig
from robots.drivers import DRIVERS
from robots.names import RANDOMIZATIONS
from robots.objects import ObjectSet

KNOWN_KEYS = {
    "id",
    "driver",
    "camera",
    "workspace",
    "object_set",
    "randomization",
    "objects_per_bin",
    "object_size_range_m",
    "seed",
    "proxy_real_factors",
}
CAMERA_KEYS = {"width", "height", "jitter_deg", "fov_deg", "sensor_width"}
WORKSPACE_KEYS = {"low", "high", "max_step_cm"}
FLEET_DIR = Path(__file__).parent / "fleet"


class InventoryError(ValueError):
    """A fleet file is wrong; the message names the file and the field."""


def _section(path: str, data: dict, key: str, allowed: set[str]) -> dict:
    section = data.get(key, {}) or {}
    if not isinstance(section, dict):
        raise InventoryError(f"{path}: {key} must be a mapping")
    unknown = set(section) - allowed
    if unknown:
        raise InventoryError(
            f"{path}: unknown {key} field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    return section


@contextlib.contextmanager
def _field(path: str, name: str) -> Iterator[None]:
    """Turns a bad value into an InventoryError naming the file and the field."""
    try:
        yield
    except (TypeError, ValueError) as err:
        raise InventoryError(f"{path}: {name}: {err}") from None


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


def _vector(value: object, name: str) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError(f"{name} must be a list of three numbers [x, y, z], not {value!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must hold numbers, not {value!r}")
    return tuple(float(v) for v in value)


def load_arm(path: Path) -> ArmConfig:
    """Reads and validates one arm's file."""
    return parse_arm(Path(path).read_text(), str(path))


def parse_arm(text: str, source: str) -> ArmConfig:
    """Validates one arm's settings given as YAML text; `source` names it in errors.

    Raises:
        InventoryError: the text is not a valid arm configuration; the message
            names the source and the field.
    """
    path = source
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InventoryError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise InventoryError(f"{path}: expected a mapping of arm settings")
    unknown = set(data) - KNOWN_KEYS
    if unknown:
        raise InventoryError(
            f"{path}: unknown field(s) {sorted(unknown)}; allowed: {sorted(KNOWN_KEYS)}"
        )
    arm_id = data.get("id")
    if not isinstance(arm_id, str) or not arm_id:
        raise InventoryError(f"{path}: id is missing (a name such as kuka-01)")
    driver = data.get("driver")
    if driver not in DRIVERS:
        raise InventoryError(
            f"{path}: driver {driver!r} is unknown; registered drivers: {sorted(DRIVERS)}"
        )
    camera = _section(path, data, "camera", CAMERA_KEYS)
    workspace = _section(path, data, "workspace", WORKSPACE_KEYS)
    with _field(path, "camera"):
        camera_config = CameraConfig(**camera)
    with _field(path, "workspace"):
        for key in ("low", "high"):
            if key in workspace:
                workspace[key] = _vector(workspace[key], key)
        workspace_config = WorkspaceConfig(**workspace)
    object_set = data.get("object_set", "train")
    with _field(path, "object_set"):
        ObjectSet(str(object_set))
    with _field(path, "seed"):
        seed = _integer(data.get("seed", 0))
    randomization = data.get("randomization", "none")
    if randomization not in RANDOMIZATIONS:
        raise InventoryError(
            f"{path}: randomization {randomization!r} is unknown; use one of {RANDOMIZATIONS}"
        )
    with _field(path, "objects_per_bin"):
        objects_per_bin = _integer(data.get("objects_per_bin", 5))
        if not 1 <= objects_per_bin <= 20:
            raise ValueError(f"{objects_per_bin} objects; use 1..20")
    size_range = data.get("object_size_range_m", list(DEFAULT_SIZE_RANGE_M))
    if (
        not isinstance(size_range, list)
        or len(size_range) != 2
        or not all(isinstance(v, int | float) for v in size_range)
    ):
        raise InventoryError(
            f"{path}: object_size_range_m must be [low, high] in metres, not {size_range!r}"
        )
    factors = data.get("proxy_real_factors", list(PROXY_REAL_FACTORS))
    if not isinstance(factors, list) or not set(factors) <= set(PROXY_REAL_FACTORS):
        raise InventoryError(
            f"{path}: proxy_real_factors must be a list of some of {list(PROXY_REAL_FACTORS)}, "
            f"not {factors!r}"
        )
    with _field(path, "object_size_range_m"):
        WorldConfig(object_size_range_m=(float(size_range[0]), float(size_range[1])))
    world = WorldConfig(
        object_size_range_m=(float(size_range[0]), float(size_range[1])),
        domain="proxy-real" if driver == "proxy-real" else "sim",
        proxy_real_factors=tuple(factors),
        randomization=randomization,
        object_set=str(object_set),
        objects_per_bin=objects_per_bin,
        camera=camera_config,
        workspace=workspace_config,
        seed=seed,
    )
    return ArmConfig(id=arm_id, driver=driver, world=world, source=source)


def load_inventory(folder: Path = FLEET_DIR) -> list[ArmConfig]:
    """Every arm in a folder of YAML files, ids unique."""
    arms = [load_arm(p) for p in sorted(Path(folder).glob("*.yaml"))]
    seen: dict[str, str] = {}
    for arm in arms:
        if arm.id in seen:
            raise InventoryError(f"{arm.source}: id {arm.id!r} is already used by {seen[arm.id]}")
        seen[arm.id] = arm.source
    return arms


def find_arm(arm_id: str, folder: Path = FLEET_DIR) -> ArmConfig:
    """The arm `arm_id` from the inventory in `folder`.

    Raises:
        InventoryError: no arm in the folder has that id.
    """
    for arm in load_inventory(folder):
        if arm.id == arm_id:
            return arm
    raise InventoryError(f"no arm {arm_id!r} in {folder}")
