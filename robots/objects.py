"""Objects for the tray: pybullet_data's 1,000 procedural URDFs, generated prism unions, mesh folders.

Object sets by name:
- "train" / "test": pybullet_data `random_urdfs/NNN/NNN.urdf` with a fixed split:
  numbers ending in 9 (100 objects) are the test set, the other 900 train.
- "procedural": unlimited new objects, each a union of random rectangular
  prisms at random positions and orientations, rescaled so its longest extent
  lies in `size_range_m`, with mass from volume.
- any folder: every *.urdf in it, and every *.obj (scaled into `size_range_m`),
  like the paper's ShapeNet comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet_data

from robots.config import DEFAULT_SIZE_RANGE_M, DENSITY_KG_M3

RANDOM_URDFS = Path(pybullet_data.getDataPath()) / "random_urdfs"
NUM_RANDOM_URDFS = 1000


def is_test_object(number: int) -> bool:
    """The fixed split of random_urdfs: numbers ending in 9 are held out."""
    return number % 10 == 9


def split(name: str) -> list[int]:
    """Object numbers of the "train" or "test" set."""
    numbers = range(NUM_RANDOM_URDFS)
    if name == "test":
        return [n for n in numbers if is_test_object(n)]
    if name == "train":
        return [n for n in numbers if not is_test_object(n)]
    raise ValueError(f"unknown split {name!r}")


@dataclass(frozen=True)
class Prism:
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
        name: "train", "test", "procedural", or a folder path.
        size_range_m: Longest-extent range of generated and mesh objects.
        density_kg_m3: Gives generated and mesh objects their mass (URDFs bring their own).
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
        if name in ("train", "test"):
            self._files = [str(RANDOM_URDFS / f"{n:03d}" / f"{n:03d}.urdf") for n in split(name)]
        elif name == "procedural":
            self._files = []
        else:
            folder = Path(name)
            if not folder.is_dir():
                raise ValueError(
                    f"object set {name!r} is neither train, test, procedural nor a folder"
                )
            self._files = sorted(str(p) for p in folder.iterdir() if p.suffix in (".urdf", ".obj"))
            if not self._files:
                raise ValueError(f"object folder {name} has no .urdf or .obj files")

    def sample(self, rng: np.random.Generator, count: int) -> list[ObjectSpec]:
        if self.name == "procedural":
            return [
                procedural_object(rng, self.size_range_m, self.density_kg_m3) for _ in range(count)
            ]
        chosen = rng.choice(len(self._files), size=count, replace=len(self._files) < count)
        specs = []
        for i in chosen:
            path = self._files[int(i)]
            if self.name in ("train", "test"):
                object_id = f"{self.name}:{Path(path).stem}"
            else:  # a folder may hold both duck.urdf and duck.obj
                object_id = f"mesh:{Path(path).name}"
            if path.endswith(".obj"):
                # Meshes come in any unit: scale each into the graspable size range.
                extent = mesh_extent(path)
                scale = rng.uniform(*self.size_range_m) / extent
                # Half the bounding box: a rough volume for a mesh that need not be closed.
                mass = self.density_kg_m3 * 0.5 * np.prod(mesh_box(path) * scale)
                specs.append(
                    ObjectSpec(
                        object_id=object_id, path=path, mesh_scale=float(scale), mass_kg=float(mass)
                    )
                )
            else:
                specs.append(ObjectSpec(object_id=object_id, path=path))
        return specs


def mesh_box(path: str) -> np.ndarray:
    """Size of a Wavefront OBJ's bounding box along x, y and z, in its own units."""
    with open(path, encoding="utf-8", errors="replace") as f:
        vertices = [[float(v) for v in line.split()[1:4]] for line in f if line.startswith("v ")]
    if not vertices:
        raise ValueError(f"{path} has no vertices")
    vertices = np.array(vertices)
    return vertices.max(axis=0) - vertices.min(axis=0)


def mesh_extent(path: str) -> float:
    return float(mesh_box(path).max())
