"""The store's episodes as an RLDS dataset in TFDS's directory format, streamed and resumable.

`export(stub, filter, out)` reads the matching episodes in ingest order (one
GetEpisode each, so memory stays one episode deep) and appends them to a TFDS
dataset under `out` (dataset_info.json, features.json, TFRecord shards of
`episodes_per_shard`), through TFDS's own sequential writer. A stopped export
continues where it stopped: the dataset's metadata lists only closed shards,
and `graspfleet_export.json` beside it records the filter and the last episode
it had recorded; an export with another filter, or a store that no longer
holds the same episodes in the same order, is refused rather than mixed.

The same episodes give the same bytes: episodes in ingest order, images as
stored, no timestamps of the export itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from graspfleet.v1 import episode_store_pb2
from models.episodes import rlds
from models.episodes.selection import is_evaluation
from services.common.files import write_atomically
from services.episode_store import client

MANIFEST = "graspfleet_export.json"
SPLIT = "train"


PURPOSES = {
    "": lambda summary: True,
    "training": lambda summary: not is_evaluation(summary),
    "evaluation": is_evaluation,
}


class ExportRefused(ValueError):
    """The folder holds something else, or the store changed under a stopped export."""


@dataclass(frozen=True)
class Exported:
    """What an export wrote: episodes in the dataset, of which this call added `added`."""

    directory: Path
    episodes: int
    added: int
    shards: int


def export(
    stub,
    flt: episode_store_pb2.EpisodeFilter,
    out: Path,
    *,
    episodes_per_shard: int = 100,
    purpose: str = "",
    on_episode: Callable[[int, int], None] | None = None,
) -> Exported:
    """Writes (or completes) the RLDS export of the episodes matching `flt` under `out`.

    Args:
        stub: The episode store.
        flt: Which episodes.
        out: The dataset folder (created; a stopped export of the same filter is resumed).
        episodes_per_shard: Episodes per TFRecord shard.
        purpose: "training" (no evaluation episodes), "evaluation" (only those) or "" (all).
        on_episode: Called with (episodes exported, episodes to export) after each one.

    Raises:
        ExportRefused: `out` holds another export or other files, or the store no
            longer holds the episodes a stopped export wrote, in the same order.
        ValueError: an episode cannot be exported (no step, an unsupported image).
    """
    import tensorflow_datasets as tfds

    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r}: use one of {sorted(PURPOSES)}")
    summaries = [s for s in client.list_all(stub, flt) if PURPOSES[purpose](s)]
    wanted = json_format.MessageToDict(flt, preserving_proto_field_name=True)
    if purpose:
        wanted["purpose"] = purpose
    sizes = {(s.image_size.height, s.image_size.width) for s in summaries}
    height, width = sizes.pop() if len(sizes) == 1 else (None, None)
    done = _resumable(out, wanted, summaries)
    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(
            name=rlds.DATASET_NAME,
            version=tfds.core.Version(rlds.VERSION),
            data_dir=str(out),
            module_name="graspfleet",
        ),
        description="graspfleet episodes in the RLDS layout (models/episodes/rlds.py).",
        features=rlds.features(height, width),
        # A resumed export reads the metadata back and writes metadata.json: so does a new one.
        metadata=tfds.core.MetadataDict(),
    )
    out.mkdir(parents=True, exist_ok=True)
    if not done:
        _write_manifest(out, wanted, "", 0)  # from here on the folder is this export's
    writer = tfds.core.SequentialWriter(
        info, max_examples_per_shard=episodes_per_shard, overwrite=not done
    )
    if not done:
        writer.initialize_splits([SPLIT])
    # A shard's episodes go to the writer together: it rewrites the dataset's metadata
    # on every call, and a shard is what a stopped export resumes after anyway.
    shard: list[dict] = []
    for index in range(done, len(summaries)):
        response = stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(
                episode_id=summaries[index].episode_id, include_steps=True
            ),
            timeout=60,
        )
        shard.append(
            rlds.example(
                response.header, list(response.steps), response.outcome, response.summary.label
            )
        )
        if len(shard) == episodes_per_shard:
            writer.add_examples({SPLIT: shard})  # closes the shard
            shard = []
            _write_manifest(out, wanted, summaries[index].episode_id, index + 1)
        if on_episode:
            on_episode(index + 1, len(summaries))
    if shard:
        writer.add_examples({SPLIT: shard})
    writer.close_all()
    _write_manifest(out, wanted, summaries[-1].episode_id if summaries else "", len(summaries))
    return Exported(
        out, len(summaries), len(summaries) - done, len(info.splits[SPLIT].shard_lengths)
    )


def _resumable(out: Path, wanted: dict, summaries: list) -> int:
    """Episodes a stopped export of the same filter already wrote (0 for a new export)."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        if out.exists() and any(out.iterdir()):
            raise ExportRefused(
                f"{out} is not empty and holds no graspfleet export: choose another"
            )
        return 0
    record = json.loads(manifest.read_text())
    if record.get("filter") != wanted:
        raise ExportRefused(
            f"{out} holds an export of another filter ({record.get('filter')}); "
            "choose another folder"
        )
    noted = int(record["episodes"])
    if noted and (len(summaries) < noted or summaries[noted - 1].episode_id != record["last"]):
        raise ExportRefused(
            f"{out} holds {noted} episodes up to {record['last']}, but the store's episodes "
            "for this filter no longer start with them (episodes were quarantined or "
            "re-ingested): export into a new folder"
        )
    # The dataset's own metadata lists the closed shards; it is written before the
    # manifest, so a stop between the two leaves it one shard ahead, never behind.
    if not (out / "dataset_info.json").is_file():
        return 0  # stopped before the writer's first metadata
    info = json.loads((out / "dataset_info.json").read_text())
    (split,) = [s for s in info.get("splits", []) if s["name"] == SPLIT] or [{}]
    done = sum(int(n) for n in split.get("shardLengths", []))
    if done > len(summaries):
        raise ExportRefused(
            f"{out} holds {done} episodes but the store has {len(summaries)} for this filter: "
            "export into a new folder"
        )
    return done


def _write_manifest(out: Path, wanted: dict, last: str, episodes: int) -> None:
    text = json.dumps({"filter": wanted, "last": last, "episodes": episodes}, sort_keys=True)
    write_atomically(out / MANIFEST, text + "\n")
