"""An RLDS dataset in TFDS's directory format, with graspfleet's features, into a store.

`import_dataset(stub, directory)` checks the dataset's features against
models/episodes/rlds.py first (a field missing, or one the store has no place
for, is refused by name before anything is written), then streams each
episode to the store. Writes are idempotent (episode ids), so an interrupted
import is simply run again. A label that a person corrected in the source
fleet is corrected here too, with its source and reason (this needs the
store's token); labels from the robots' own reports follow from the outcomes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import rlds
from services.episode_store import client


class ImportRefused(ValueError):
    """The dataset does not have graspfleet's features, or a label needs a token."""


@dataclass(frozen=True)
class Imported:
    """Episodes read, newly stored, already in the store, and labels corrected."""

    episodes: int
    added: int
    duplicates: int
    relabeled: int


def import_dataset(
    stub,
    directory: Path,
    *,
    split: str = "train",
    metadata: list[tuple[str, str]] | None = None,
    on_episode: Callable[[int, int], None] | None = None,
) -> Imported:
    """Ingests every episode of the dataset's `split`.

    Args:
        stub: The episode store.
        directory: The TFDS dataset folder (dataset_info.json, features.json, shards).
        split: The split to import.
        metadata: The store's bearer token metadata, for corrected labels.
        on_episode: Called with (episodes done, episodes in the split).

    Raises:
        ImportRefused: fields missing or unknown (named), no such split, or a
            corrected label and no token.
        ValueError: an episode holds a value the store cannot (the field is named).
        grpc.RpcError: the store refused an episode (its message names the field).
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(directory))
    have, want = _fields(builder.info.features), _fields(rlds.features(None, None))
    missing, unknown = sorted(want - have), sorted(have - want)
    if missing or unknown:
        raise ImportRefused(
            f"{directory} does not have graspfleet's RLDS features (models/episodes/rlds.py): "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"no place in the store for {', '.join(unknown)}" if unknown else "",
                )
                if part
            )
        )
    if split not in builder.info.splits:
        raise ImportRefused(
            f"{directory} has no split {split!r} (splits: {list(builder.info.splits)})"
        )
    total = builder.info.splits[split].num_examples
    images = {
        "steps": {"observation": {"image": tfds.decode.SkipDecoding()}},
        "episode_metadata": {"x0": tfds.decode.SkipDecoding()},
    }
    added = duplicates = relabeled = 0
    dataset = builder.as_dataset(split=split, decoders=images, shuffle_files=False)
    for done, example in enumerate(tfds.as_numpy(dataset), start=1):
        record, label = rlds.record(example)
        response = client.write_episode(stub, record)
        duplicates += response.duplicate
        added += not response.duplicate
        if label.state == common_pb2.LABEL_STATE_RELABELED and not _same(response.label, label):
            if not metadata:
                raise ImportRefused(
                    f"episode {record.header.episode_id} carries a corrected label "
                    f"({label.source}); pass the store's token to import it"
                )
            stub.Relabel(
                episode_store_pb2.RelabelRequest(
                    episode_id=record.header.episode_id,
                    success=label.success,
                    reason=label.reason or "corrected in the source fleet",
                    source=label.source or "import",
                ),
                metadata=metadata,
                timeout=30,
            )
            relabeled += 1
        if on_episode:
            on_episode(done, total)
    return Imported(total, added, duplicates, relabeled)


def _same(stored: common_pb2.Label, imported: common_pb2.Label) -> bool:
    return (stored.state, stored.success, stored.source) == (
        imported.state,
        imported.success,
        imported.source,
    )


def _fields(features, prefix: str = "") -> set[str]:
    """Every leaf feature's path ("steps/observation/image")."""
    import tensorflow_datasets as tfds

    if isinstance(features, tfds.features.Dataset):
        features = features.feature
    if isinstance(features, tfds.features.FeaturesDict):
        return {
            path
            for name, feature in features.items()
            for path in _fields(feature, f"{prefix}{name}/")
        }
    return {prefix.rstrip("/")}
