"""A picture of the worlds: x0 / xt / mask (/ canonical) samples per randomization mode and for proxy-real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from robots.config import CameraConfig, WorldConfig
from robots.episode import run_episode
from robots.policies import RandomPolicy
from robots.world import GraspWorld

ROWS = (
    ("sim", "none"),
    ("sim", "visual"),
    ("sim", "dynamics"),
    ("sim", "all"),
    ("proxy-real", "none"),
)
MASK_COLOURS = np.array([[40, 40, 40], [120, 120, 200], [240, 150, 40], [60, 200, 90]], np.uint8)


def snapshot(
    path: Path, seed: int = 0, size: int = 128, samples: int = 2, canonical: bool = False
) -> Path:
    """Writes a PNG grid: one row per world, (x0, xt, mask) for `samples` episodes each.

    Args:
        path: The PNG to write.
        seed: Seeds the worlds and their episodes.
        size: Image side, pixels.
        samples: Episodes per row.
        canonical: Add the canonical image of xt (RCAN) after each mask.

    Returns:
        The path written.
    """
    label_width = 110
    names = ["x0", "xt", "mask"] + (["canonical"] if canonical else [])
    rows = []
    for domain, randomization in ROWS:
        config = WorldConfig(
            domain=domain,
            randomization=randomization,
            seed=seed,
            camera=CameraConfig(width=size, height=size),
        )
        tiles = []
        with GraspWorld(config, render_canonical=canonical) as world:
            for i in range(samples):
                run = run_episode(world, RandomPolicy(world), seed=seed * 100 + i, max_steps=4)
                xt = run.steps[len(run.steps) // 2].observation
                tiles += [run.x0.rgb, xt.rgb, MASK_COLOURS[xt.mask]]
                if canonical:
                    tiles.append(xt.canonical)
        label = Image.new("RGB", (label_width, size), (255, 255, 255))
        ImageDraw.Draw(label).text(
            (6, size // 2 - 12), f"{domain}\n{randomization}", fill=(0, 0, 0)
        )
        rows.append(np.concatenate([np.asarray(label), *tiles], axis=1))
    header = Image.new("RGB", (rows[0].shape[1], 18), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    for i, name in enumerate(names * samples):
        draw.text((label_width + i * size + 4, 3), name, fill=(0, 0, 0))
    grid = np.concatenate([np.asarray(header), *rows], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
