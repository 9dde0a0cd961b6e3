"""Which stored episodes a model may learn from, and train/validation splits that share no object.

Plain Python over the store's episode summaries (no TensorFlow), so the
trainer's service side selects data without loading a network library.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes.shards import EVALUATION, PURPOSE


def is_evaluation(episode: episode_store_pb2.EpisodeSummary) -> bool:
    """Whether an episode was run to score a model (attribute purpose=evaluation)."""
    return episode.attributes.get(PURPOSE) == EVALUATION


def labeled(
    episodes: Iterable[episode_store_pb2.EpisodeSummary],
) -> list[episode_store_pb2.EpisodeSummary]:
    """The episodes that may be learned from: labeled, and not evaluation episodes.

    Every selection of training or validation data goes through here, so a
    closed-loop evaluation's episodes (on objects no model may train on) never
    become training data, whatever the query that found them.
    """
    return [
        e
        for e in episodes
        if e.label.state != common_pb2.LABEL_STATE_UNLABELED and not is_evaluation(e)
    ]


# How far the held-out share may land from the asked validation fraction f, as a share
# of min(f, 1 - f): 0.5 lets 20% become 10-30%, and never nothing or everything.
SPLIT_TOLERANCE = 0.5


class ObjectSplitError(ValueError):
    """No split by whole object groups holds out the asked share of the episodes.

    Its message says how many episodes and object groups there are, the largest
    group's share of the episodes, and what to do.
    """


def _object_groups(summaries: Sequence[episode_store_pb2.EpisodeSummary]) -> list[list[int]]:
    """Indices of `summaries` grouped by shared object ids (transitively), sorted."""
    parent = list(range(len(summaries)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, episode in enumerate(summaries):
        for object_id in episode.object_ids:
            parent[root(i)] = root(owner.setdefault(object_id, i))
    groups: dict[int, list[int]] = {}
    for i in range(len(summaries)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def _percent(share: float) -> str:
    return f"{100 * share:.3g}%"


def split_episodes(
    summaries: Sequence[episode_store_pb2.EpisodeSummary],
    validation_fraction: float,
    seed: int,
    tolerance: float = SPLIT_TOLERANCE,
) -> tuple[list[episode_store_pb2.EpisodeSummary], list[episode_store_pb2.EpisodeSummary]]:
    """Splits episodes into (train, validation) with no object on both sides.

    Episodes sharing any object id are grouped (transitively; an episode with
    no object ids is a group of its own); groups go whole to one side, in
    seeded random order, each to the side that brings the validation share
    closer to f = `validation_fraction`.

    The split can be made when the validation share lands within
    `tolerance * min(f, 1 - f)` of f, which also rules out holding out nothing
    or everything. The pass above always lands there when no group holds more
    than twice that margin of the episodes: scenes whose objects come from
    fixed bins form one group per bin. When objects link the episodes into a
    few big groups (a few objects per scene from one shared pool link nearly
    all of them), the split cannot be made and that is an error: splitting
    the episodes themselves would validate on objects the model trained on.

    Args:
        summaries: The episodes to split.
        validation_fraction: Share of the episodes to hold out, in [0, 1); 0
            holds out none.
        seed: Seeds the order in which groups are considered.
        tolerance: How far the held-out share may be from `validation_fraction`,
            as a share of min(f, 1 - f), in [0, 1).

    Returns:
        (train, validation), each in the order of `summaries`.

    Raises:
        ObjectSplitError: the split cannot be made (see above).
        ValueError: `validation_fraction` or `tolerance` is out of range.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance={tolerance} must be in [0, 1)")
    if validation_fraction == 0:
        return list(summaries), []
    groups = _object_groups(summaries)
    order = list(groups)
    random.Random(seed).shuffle(order)
    total = len(summaries)
    target = validation_fraction * total
    held_out: list[int] = []
    for group in order:
        if abs(len(held_out) + len(group) - target) < abs(len(held_out) - target):
            held_out.extend(group)
    margin = tolerance * min(validation_fraction, 1.0 - validation_fraction)
    # The small slack keeps a share exactly at the margin's edge inside it despite rounding.
    if not total or abs(len(held_out) / total - validation_fraction) > margin + 1e-9:
        raise ObjectSplitError(
            _split_error(total, groups, validation_fraction, margin, len(held_out))
        )
    chosen = set(held_out)
    return (
        [e for i, e in enumerate(summaries) if i not in chosen],
        [e for i, e in enumerate(summaries) if i in chosen],
    )


def _split_error(
    total: int, groups: list[list[int]], fraction: float, margin: float, held_out: int
) -> str:
    largest = max((len(g) for g in groups), default=0) / max(total, 1)
    account = (
        f"cannot hold out {_percent(fraction)} (+/- {_percent(margin)}) of {total} episodes by "
        f"object: shared objects link them into {len(groups)} object "
        f"group{'' if len(groups) == 1 else 's'}, the largest "
        f"holding {_percent(largest)} of the episodes, and splitting by whole groups "
        f"held out {held_out} ({_percent(held_out / max(total, 1))})"
    )
    # If no whole number of episodes is within the margin, objects are not what stands in the way.
    count = min(max(round(fraction * total), 1), total - 1)
    if total < 2 or abs(count / total - fraction) > margin + 1e-9:
        return (
            f"{account}; no whole number of episodes is that share either: add episodes or "
            "change the validation fraction"
        )
    return (
        f"{account}; collect validation episodes on a disjoint object set, or draw scenes "
        "from object bins"
    )
