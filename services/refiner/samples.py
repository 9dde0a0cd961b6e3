"""The paper's Figure 1 from a fleet's own data: a PNG grid of sim | refined | real images.

Simulated and real (proxy-real) episodes come from the episode store; each row
shows one simulated image (the middle step of an episode, arm in view), the
same image through the published generator, and a real image for comparison.
The generator is loaded from the model repository and checked exactly as the
refiner service checks it before serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.generators import export
from models.generators.serving import generate, load_generator
from services.common.images import decode_image
from services.episode_store import client

HEADER_PX = 18
COLUMNS = {
    export.KIND_GRASPGAN: ("sim", "refined", "real"),
    export.KIND_RCAN: ("sim", "canonical", "real"),
}


@dataclass(frozen=True)
class Grid:
    """What was written."""

    path: Path
    rows: int
    model: common_pb2.ModelRef


def _middle_images(stub, domain: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One image (the middle step) from each of `count` random episodes of `domain`."""
    summaries = list(client.list_all(stub, episode_store_pb2.EpisodeFilter(domain=domain)))
    picked = rng.permutation(len(summaries))[:count]
    images = []
    for index in sorted(picked):
        episode = stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(
                episode_id=summaries[index].episode_id, include_steps=True
            ),
            timeout=30,
        )
        images.append(decode_image(episode.steps[len(episode.steps) // 2].image))
    return images


def _tile(image: np.ndarray, size: int) -> np.ndarray:
    # Nearest neighbour: every shown pixel is one the camera or the generator produced.
    return np.asarray(Image.fromarray(image).resize((size, size), Image.NEAREST))


def write_samples(
    out: Path,
    store_address: str,
    model_base: Path,
    *,
    kind: str = export.KIND_GRASPGAN,
    name: str = "",
    version: int = 0,
    rows: int = 4,
    tile: int = 128,
    seed: int = 0,
) -> Grid:
    """Writes the grid: a header line, then `rows` rows of (sim, refined, real) tiles.

    Args:
        out: The PNG to write.
        store_address: Episode store host:port.
        model_base: The model repository.
        kind: "graspgan" or "rcan".
        name: Model name; the kind's default name when empty.
        version: Generator version; 0 means "stable", else the newest.
        rows: Image rows (fewer when the store holds fewer episodes).
        tile: Side of each tile, pixels.
        seed: Chooses the episodes.

    Returns:
        Where it went, how many rows, and the generator version used.

    Raises:
        ValueError: no generator, or the store has no simulated or no real episodes.
    """
    if kind not in export.KINDS:
        raise ValueError(f"kind {kind!r}; use one of {export.KINDS}")
    if rows < 1 or tile < 16:
        raise ValueError(f"rows={rows}, tile={tile}: need at least 1 row of 16-pixel tiles")
    loaded = load_generator(model_base, kind, name or export.DEFAULT_NAMES[kind], version)
    rng = np.random.default_rng(seed)
    channel, stub = client.connect(store_address)
    with channel:
        sim = _middle_images(stub, common_pb2.DOMAIN_SIM, rows, rng)
        real = _middle_images(stub, common_pb2.DOMAIN_REAL, rows, rng)
    if not sim or not real:
        missing = "simulated" if not sim else "real"
        raise ValueError(f"the store at {store_address} has no {missing} episodes to show")
    count = min(len(sim), len(real))
    refined, _ = generate(loaded, np.stack(sim[:count]))
    header = Image.new("RGB", (3 * tile, HEADER_PX), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    for column, title in enumerate(COLUMNS[kind]):
        draw.text((column * tile + 4, 3), title, fill=(0, 0, 0))
    lines = [
        np.concatenate([_tile(image, tile) for image in (sim[i], refined[i], real[i])], axis=1)
        for i in range(count)
    ]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([np.asarray(header), *lines], axis=0)).save(out)
    model = common_pb2.ModelRef(name=loaded.name, version=loaded.version)
    return Grid(path=out, rows=count, model=model)
