"""The data folder: an episode store plus the settings its episodes were collected with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SPLITS = {"train": "train", "test": "sim-test"}  # split -> object set (robots.objects pools)
MANIFEST = "collection.json"


@dataclass(frozen=True)
class DataSettings:
    """How a data folder's episodes are made; fixed for the folder (its collection.json).

    Attributes:
        seed: Seeds every scene and policy; the same seed replays the same episodes.
        attempts: Attempts per training scene: the scene is reset from the same seed and
            the policy gets another seed each time.
        oracle_fraction: Share of training episodes from the noisy oracle (the rest explore
            randomly).
        oracle_sigma_m: The noisy oracle's grasp-point noise (std, metres, x and y).
        oracle_yaw_sigma_rad: The noisy oracle's closing-direction noise (std, radians).
        max_steps: Steps per episode at most (the last one closes).
        objects_per_bin: Objects dropped into the tray per scene.
        masks: Store the segmentation masks (needed by `train --scene-weight`).
    """

    seed: int = 1
    attempts: int = 1
    oracle_fraction: float = 0.0
    oracle_sigma_m: float = 0.02
    oracle_yaw_sigma_rad: float = 0.3
    max_steps: int = 8
    objects_per_bin: int = 5
    masks: bool = False

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.max_steps < 1 or not 1 <= self.objects_per_bin <= 20:
            raise ValueError("attempts and max_steps must be at least 1, objects_per_bin 1..20")
        if not 0.0 <= self.oracle_fraction <= 1.0:
            raise ValueError(f"oracle_fraction={self.oracle_fraction}: use 0..1")
        if self.oracle_sigma_m < 0 or self.oracle_yaw_sigma_rad < 0:
            raise ValueError("the noisy oracle's standard deviations must not be negative")


def episode_id(split: str, index: int) -> str:
    return f"{split}-e{index:06d}"


def episode_index(summary) -> int:
    """The index `episode_id` gave a stored episode within its split."""
    return int(summary.episode_id.rpartition("-e")[2])


def open_store(data: Path):
    from services.episode_store.metadata import open_metadata_store
    from services.episode_store.store import EpisodeStore

    store_dir = data / "store"
    store_dir.mkdir(parents=True, exist_ok=True)
    # The store service's own layout, so `graspfleet store serve --data-dir` can serve it too.
    return EpisodeStore(
        store_dir, open_metadata_store(sqlite_path=str(store_dir / "episodes.sqlite"))
    )


def split_episodes(store, split: str) -> list:
    """Labeled episodes of one split, by index."""
    from graspfleet.v1 import episode_store_pb2
    from models.episodes.dataset import labeled

    found, token = [], ""
    while True:
        page = store.list(
            episode_store_pb2.ListEpisodesRequest(
                filter=episode_store_pb2.EpisodeFilter(collection_id=split),
                page_size=1000,
                page_token=token,
            )
        )
        found += page.episodes
        token = page.next_page_token
        if not token:
            return sorted(labeled(found), key=lambda e: e.episode_id)


def read_manifest(data: Path) -> DataSettings:
    path = data / MANIFEST
    if not path.exists():
        raise SystemExit(f"no collection in {data}: run `collect --data {data}` first")
    return DataSettings(**json.loads(path.read_text())["settings"])
