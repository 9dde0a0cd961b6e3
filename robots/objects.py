"""Objects for the tray: four disjoint pools, generated prism unions, and mesh folders.

The pools keep the sim-to-real numbers honest (docs/decisions/object-pools.md):

- "train": sim training, pybullet_data `random_urdfs` whose number ends in 0-7 (800).
- "sim-test": held-out objects for simulated validation and evaluation, numbers ending in 8.
- "real-train": what the proxy-real arms collect their labeled episodes on, numbers ending in 9.
- "real-test": the closed-loop evaluation's objects, a family the simulator never saw:
  pybullet_data's everyday meshes (duck, teddy, mug, bunny, lego, jenga, ...), each
  scaled into the graspable size range. No model, sim or real, trains on them.

Scenes of a `random_urdfs` pool draw their objects from one *bin* of BIN_SIZE
objects of the pool, as a lab's bin holds a set of objects at a time: episodes
then share objects only within a bin, so training and validation episodes can
be split by object (bins go whole to one side).

Other sets: "procedural" (unlimited new objects, each a union of random
rectangular prisms, rescaled so its longest extent lies in `size_range_m`, mass
from volume), or any folder of *.urdf and *.obj files (meshes scaled into
`size_range_m`), like the paper's ShapeNet comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet_data

from robots.config import DEFAULT_SIZE_RANGE_M, DENSITY_KG_M3

DATA = Path(pybullet_data.getDataPath())
RANDOM_URDFS = DATA / "random_urdfs"
NUM_RANDOM_URDFS = 1000
BIN_SIZE = 10
# Last digit of the random_urdfs numbers in each pool.
RANDOM_URDF_POOLS = {
    "train": tuple(range(8)),
    "sim-test": (8,),
    "real-train": (9,),
}
# The real-test family: everyday shapes from pybullet_data, none of them a random_urdf.
REAL_TEST_MESHES = (
    "duck_vhacd.obj",
    "teddy2_VHACD_CHs.obj",
    "bunny.obj",
    "lego/lego_vhacd.obj",
    "jenga/jenga.obj",
    "torus/torus_textured.obj",
    "objects/mug_col.obj",
    "toys/cylinder.obj",
    "toys/prism.obj",
    "toys/shape_sorter.obj",
    "toys/cube.obj",
)
# Everyday shapes are compact, unlike the thin prism unions: at the prisms' 8-15 cm many
# would not fit between the open fingers, so the family gets its own graspable size.
# Flat shapes (a stone, a domino, a lid) are left out: a top-down pinch cannot hold them.
REAL_TEST_SIZE_RANGE_M = (0.07, 0.10)
POOLS = (*RANDOM_URDF_POOLS, "real-test")
RETIRED = {
    "test": "the held-out set is now one of three pools: 'sim-test' (simulated validation), "
    "'real-train' (proxy-real arms) or 'real-test' (closed-loop evaluation only)"
}


def pool_numbers(name: str) -> list[int]:
    """random_urdfs numbers of the pool `name` ("train", "sim-test" or "real-train")."""
    if name not in RANDOM_URDF_POOLS:
        raise ValueError(
            f"{name!r} is not a random_urdfs pool; those are {sorted(RANDOM_URDF_POOLS)}"
        )
    digits = RANDOM_URDF_POOLS[name]
    return [n for n in range(NUM_RANDOM_URDFS) if n % 10 in digits]


def pool_files(name: str) -> list[str]:
    """Every object file of a pool, in a fixed order."""
    if name == "real-test":
        return [str(DATA / relative) for relative in REAL_TEST_MESHES]
    return [str(RANDOM_URDFS / f"{n:03d}" / f"{n:03d}.urdf") for n in pool_numbers(name)]


def object_id(pool: str, path: str) -> str:
    """The id an object of `pool` is stored under: "train:042", "real-test:duck_vhacd", ..."""
    if pool in POOLS:
        return f"{pool}:{Path(path).stem}"
    return f"mesh:{Path(path).name}"  # a folder may hold both duck.urdf and duck.obj


@dataclass(frozen=True)
class Prism:
    """A box (half extents, pose relative to the object's origin), one part of a compound object."""

    half_extents: tuple[float, float, float]
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]


@dataclass(frozen=True)
class ObjectSpec:
    """What to put in the tray: a URDF or mesh file, or a union of prisms."""

    object_id: str
    path: str = ""
    prisms: tuple[Prism, ...] = ()
    mass_kg: float = 0.0
    mesh_scale: float = 1.0
    # Where a mesh's own origin sits from its bounding-box centre, metres after scaling:
    # meshes are centred on their body so the body's frame and mass lie in the object.
    mesh_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    colour: tuple[float, float, float, float] | None = None  # RGBA; None keeps the file's own


def _quaternion(rng: np.random.Generator) -> tuple[float, float, float, float]:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    return tuple(float(v) for v in q)


def _rotate(q: tuple[float, float, float, float], v: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    u = np.array([x, y, z])
    return v + 2.0 * np.cross(u, np.cross(u, v) + w * v)


def _extent(prisms: list[Prism]) -> float:
    corners = []
    for prism in prisms:
        h = np.array(prism.half_extents)
        for signs in np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).T.reshape(-1, 3):
            corners.append(np.array(prism.position) + _rotate(prism.orientation, signs * h))
    corners = np.array(corners)
    return float((corners.max(axis=0) - corners.min(axis=0)).max())


def procedural_object(
    rng: np.random.Generator,
    size_range_m: tuple[float, float] = DEFAULT_SIZE_RANGE_M,
    density_kg_m3: float = DENSITY_KG_M3,
) -> ObjectSpec:
    """A new object: 2-5 random prisms, rescaled to a graspable size, mass from volume.

    Args:
        rng: Draws the shape; the same generator state gives the same object.
        size_range_m: Range of the longest extent after rescaling.
        density_kg_m3: Mass per volume.
    """
    object_id = f"procedural-{int(rng.integers(1 << 32)):08x}"
    prisms = [
        Prism(
            half_extents=tuple(float(v) for v in rng.uniform(0.01, 0.05, 3)),
            position=tuple(float(v) for v in rng.uniform(-0.04, 0.04, 3)),
            orientation=_quaternion(rng),
        )
        for _ in range(int(rng.integers(2, 6)))
    ]
    scale = rng.uniform(*size_range_m) / _extent(prisms)
    prisms = [
        Prism(
            half_extents=tuple(h * scale for h in p.half_extents),
            position=tuple(c * scale for c in p.position),
            orientation=p.orientation,
        )
        for p in prisms
    ]
    # Overlaps are counted twice: a slight overestimate of the mass, on purpose simple.
    volume = sum(8 * np.prod(p.half_extents) for p in prisms)
    # Like the paper's procedural objects, each gets a colour of its own.
    colour = (*(float(c) for c in rng.uniform(0.1, 0.95, 3)), 1.0)
    return ObjectSpec(
        object_id=object_id,
        prisms=tuple(prisms),
        mass_kg=float(volume * density_kg_m3),
        colour=colour,
    )


class ObjectSet:
    """Draws the objects of one episode from a named set.

    Args:
        name: A pool ("train", "sim-test", "real-train", "real-test"), "procedural",
            or a folder path.
        size_range_m: Longest-extent range of generated and mesh objects (the
            real-test pool always uses REAL_TEST_SIZE_RANGE_M).
        density_kg_m3: Gives generated and mesh objects their mass (URDFs bring their own).

    Raises:
        ValueError: an unknown or retired name, or a folder with no objects.
    """

    def __init__(
        self,
        name: str,
        size_range_m: tuple[float, float] = DEFAULT_SIZE_RANGE_M,
        density_kg_m3: float = DENSITY_KG_M3,
    ) -> None:
        self.name = name
        self.size_range_m = size_range_m
        self.density_kg_m3 = density_kg_m3
        if name in RETIRED:
            raise ValueError(f"object set {name!r} is retired: {RETIRED[name]}")
        if name in POOLS:
            self._files = pool_files(name)
            if name == "real-test":
                self.size_range_m = REAL_TEST_SIZE_RANGE_M
        elif name == "procedural":
            self._files = []
        else:
            folder = Path(name)
            if not folder.is_dir():
                raise ValueError(
                    f"object set {name!r} is neither one of the pools {list(POOLS)}, "
                    "'procedural' nor a folder"
                )
            self._files = sorted(str(p) for p in folder.iterdir() if p.suffix in (".urdf", ".obj"))
            if not self._files:
                raise ValueError(f"object folder {name} has no .urdf or .obj files")

    def _choose(self, rng: np.random.Generator, count: int) -> list[str]:
        files = self._files
        if self.name in RANDOM_URDF_POOLS:
            bins = len(files) // BIN_SIZE
            first = int(rng.integers(bins)) * BIN_SIZE
            files = files[first : first + BIN_SIZE]
        chosen = rng.choice(len(files), size=count, replace=len(files) < count)
        return [files[int(i)] for i in chosen]

    def sample(self, rng: np.random.Generator, count: int) -> list[ObjectSpec]:
        """`count` objects drawn from this set with `rng`, meshes scaled into the size range."""
        if self.name == "procedural":
            return [
                procedural_object(rng, self.size_range_m, self.density_kg_m3) for _ in range(count)
            ]
        specs = []
        for path in self._choose(rng, count):
            spec_id = object_id(self.name, path)
            if path.endswith(".obj"):
                # Meshes come in any unit: scale each into the graspable size range.
                low, high = mesh_bounds(path)
                scale = rng.uniform(*self.size_range_m) / float((high - low).max())
                # Half the bounding box: a rough volume for a mesh that need not be closed.
                mass = self.density_kg_m3 * 0.5 * np.prod((high - low) * scale)
                offset = -(low + high) / 2 * scale
                specs.append(
                    ObjectSpec(
                        object_id=spec_id,
                        path=path,
                        mesh_scale=float(scale),
                        mass_kg=float(mass),
                        mesh_offset=tuple(float(v) for v in offset),
                    )
                )
            else:
                specs.append(ObjectSpec(object_id=spec_id, path=path))
        return specs


def mesh_bounds(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Corners (low, high) of a Wavefront OBJ's bounding box, in its own units."""
    with open(path, encoding="utf-8", errors="replace") as f:
        vertices = [[float(v) for v in line.split()[1:4]] for line in f if line.startswith("v ")]
    if not vertices:
        raise ValueError(f"{path} has no vertices")
    vertices = np.array(vertices)
    return vertices.min(axis=0), vertices.max(axis=0)


def mesh_box(path: str) -> np.ndarray:
    """Size of a Wavefront OBJ's bounding box along x, y and z, in its own units."""
    low, high = mesh_bounds(path)
    return high - low


def mesh_extent(path: str) -> float:
    """The longest side of a Wavefront OBJ's bounding box, in its own units."""
    return float(mesh_box(path).max())
