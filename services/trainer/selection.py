"""Choosing a run's episodes from the episode store: training data and the held-out real set.

The selection is resolved once, when the run is submitted, and written into
the run's folder: a queued or restarted run trains on exactly the episodes
(and labels) it was accepted with. Real episodes are split by object first
(`models.episodes.selection.split_episodes`), so the validation set of a given data set and seed
does not depend on how much real data a recipe trains on; the amount limits
then apply to the training side only. `robot_ids` select real arms;
`object_set`, `sim_randomization` and `max_sim_episodes` select simulated
episodes; the time window applies to both. The generator recipes hold out
simulated episodes too, by object, to measure how well G keeps the scene.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from graspfleet.v1 import common_pb2, episode_store_pb2, episode_store_pb2_grpc, trainer_pb2
from models.episodes.selection import ObjectSplitError, labeled, split_episodes
from models.grasp_success import profiles
from robots.names import DOMAIN_NAMES
from services.common import upstream
from services.common.errors import InvalidArgument
from services.episode_store import client
from services.trainer.recipes import RCAN, Recipe, task_profile

Summary = episode_store_pb2.EpisodeSummary


@dataclass(frozen=True)
class Selection:
    """The episodes one run trains and validates on.

    Attributes:
        train: Training episodes (real and/or simulated), labeled, ingest order.
        validation: Held-out labeled episodes: real ones validate grasp models and
            gate them; the generator recipes' simulated ones measure scene preservation.
        description: JSON-ready account of the choice, recorded with the model.
    """

    train: list[Summary]
    validation: list[Summary]
    description: dict = field(default_factory=dict)


def _query(
    stub: episode_store_pb2_grpc.EpisodeStoreStub, flt: episode_store_pb2.EpisodeFilter
) -> list[Summary]:
    # Here, not at the top: models.episodes.dataset loads TensorFlow, which the trainer
    # must not load merely by being imported (see tests/trainer/test_layout.py).

    try:
        return labeled(client.list_all(stub, flt))
    except grpc.RpcError as err:
        raise upstream.as_service_error(err, "episode-store") from None


def _sample(episodes: list[Summary], count: int, seed: int) -> list[Summary]:
    """`count` episodes drawn with `seed`, kept in ingest order."""
    if count >= len(episodes):
        return list(episodes)
    chosen = set(random.Random(seed).sample(range(len(episodes)), count))
    return [e for i, e in enumerate(episodes) if i in chosen]


def _check_buckets(episodes: Sequence[Summary], domain: int, what: str) -> None:
    """Balanced batches draw successes and failures of every domain they use."""
    mine = [e for e in episodes if e.domain == domain]
    for success in (True, False):
        if not any(e.label.success == success for e in mine):
            raise InvalidArgument(
                f"the {what} has no {'successful' if success else 'failed'} "
                f"{DOMAIN_NAMES[domain]} episodes ({len(mine)} {DOMAIN_NAMES[domain]} episodes "
                "selected); every batch needs both labels: widen the selection"
            )


def select(
    stub: episode_store_pb2_grpc.EpisodeStoreStub, spec: trainer_pb2.RunSpec, recipe: Recipe
) -> Selection:
    """Resolves a normalized spec's data selection against the store.

    Grasp recipes validate on held-out real episodes. The generator recipes
    validate on held-out simulated episodes instead (scene preservation is
    measured against the simulator's masks): their simulated episodes are split
    by object the same way, and GraspGAN's real episodes are split as a grasp
    recipe's are, so G never sees the real images later runs validate on.

    Raises:
        InvalidArgument: nothing (or not enough) matches the selection, or the
            matching episodes cannot be split by object; the message says which
            part and why.
        Unavailable: the store did not answer.
    """
    data, seed = spec.data, spec.params.seed
    window = {}
    if data.HasField("since"):
        window["since"] = data.since
    if data.HasField("until"):
        window["until"] = data.until
    description: dict = {"window": _window_text(data), "seed": seed}
    real_train: list[Summary] = []
    validation: list[Summary] = []
    if recipe.uses_real:
        real_train, validation, description["real"] = _real(stub, spec, recipe, window)
    sim: list[Summary] = []
    if recipe.uses_sim:
        sim = _sim(stub, spec, recipe, window)
        description["sim"] = {
            "randomization": common_pb2.Randomization.Name(data.sim_randomization),
            "object_set": data.object_set,
            "train": len(sim),
        }
        if recipe.is_generator:
            sim, held_out = _split(sim, data.validation_fraction, seed, "simulated")
            description["sim"] |= {"train": len(sim), "validation": len(held_out)}
            validation = sorted(validation + held_out, key=lambda e: e.sequence)
        if recipe.trains != RCAN:  # RCAN's generator learns images, not grasps
            _check_buckets(sim, common_pb2.DOMAIN_SIM, "training data")
    if recipe.uses_real_labels and spec.params.weights.get("real_task", 1.0):
        _check_buckets(real_train, common_pb2.DOMAIN_REAL, "training data")
    train = sorted(real_train + sim, key=lambda e: e.sequence)
    profile = spec.params.profile
    _check_images(train + validation, task_profile(profile) if recipe.is_generator else profile)
    return Selection(train, validation, description)


def _split(
    episodes: list[Summary], fraction: float, seed: int, what: str
) -> tuple[list[Summary], list[Summary]]:
    """(train, held out) by object; a split that cannot be made is refused with the reason."""
    try:
        return split_episodes(episodes, fraction, seed)
    except ObjectSplitError as err:
        raise InvalidArgument(
            f"{what} validation split (data.validation_fraction={fraction:g}): {err}"
        ) from None


def _real(
    stub: episode_store_pb2_grpc.EpisodeStoreStub,
    spec: trainer_pb2.RunSpec,
    recipe: Recipe,
    window: dict,
) -> tuple[list[Summary], list[Summary], dict]:
    """(real training episodes, held-out real episodes, their description)."""
    data, seed = spec.data, spec.params.seed
    real_filter = episode_store_pb2.EpisodeFilter(
        domain=common_pb2.DOMAIN_REAL, robot_ids=data.robot_ids, **window
    )
    real = _query(stub, real_filter)
    robots = list(data.robot_ids) or "any"
    if not real:
        why = (
            "GraspGAN's discriminator learns what real images look like"
            if recipe.is_generator
            else "every grasp recipe is validated on held-out real episodes"
        )
        raise InvalidArgument(
            f"no labeled real episodes match the selection (robots {robots}, time window "
            f"{_window_text(data)}): {why}"
        )
    real_train, validation = _split(real, data.validation_fraction, seed, "real")
    if not recipe.uses_real_labels:
        real_train = []
    elif data.max_real_episodes:
        real_train = _sample(real_train, data.max_real_episodes, seed)
    elif data.real_fraction:
        real_train = _sample(real_train, math.ceil(data.real_fraction * len(real_train)), seed)
    description = {
        "robots": list(data.robot_ids),
        "matching": len(real),
        "train": len(real_train),
        "validation": len(validation),
        "validation_fraction": data.validation_fraction,
    }
    return real_train, validation, description


def _sim(
    stub: episode_store_pb2_grpc.EpisodeStoreStub,
    spec: trainer_pb2.RunSpec,
    recipe: Recipe,
    window: dict,
) -> list[Summary]:
    data = spec.data
    sim_filter = episode_store_pb2.EpisodeFilter(
        domain=common_pb2.DOMAIN_SIM,
        randomization=data.sim_randomization,
        object_set=data.object_set,
        **window,
    )
    sim = _query(stub, sim_filter)
    if not sim:
        randomization = common_pb2.Randomization.Name(data.sim_randomization)
        raise InvalidArgument(
            f"no labeled simulated episodes with {randomization} match the selection "
            f"(object set {data.object_set or 'any'}, time window {_window_text(data)}), "
            f"and recipe {recipe.name} trains on them"
        )
    if data.max_sim_episodes:
        sim = _sample(sim, data.max_sim_episodes, spec.params.seed + 1)
    return sim


def _check_images(episodes: Sequence[Summary], profile: str) -> None:
    sizes = {(e.image_size.width, e.image_size.height) for e in episodes}
    if len(sizes) != 1:
        raise InvalidArgument(
            f"the selected episodes have several image sizes (w, h) {sorted(sizes)}; "
            "narrow the selection to one camera set-up"
        )
    ((width, height),) = sizes
    crop = profiles.profile(profile).crop_size
    if crop > min(width, height):
        raise InvalidArgument(
            f"the selected episodes are {width}x{height}, smaller than profile {profile!r}'s "
            f"{crop}px crop"
        )


def _window_text(data: trainer_pb2.DataSelection) -> str:
    since = data.since.ToJsonString() if data.HasField("since") else "-"
    until = data.until.ToJsonString() if data.HasField("until") else "-"
    return f"[{since}, {until})"
