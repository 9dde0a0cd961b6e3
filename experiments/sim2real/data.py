"""The table's data: collections through the sim-farm into one store, and the real splits."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from experiments.sim2real.protocol import Row, Settings
from experiments.sim2real.stages import Stages, key, log
from graspfleet.v1 import common_pb2, episode_store_pb2, sim_farm_pb2, sim_farm_pb2_grpc
from models.episodes.selection import labeled, split_episodes
from robots.inventory import FLEET_DIR
from services.episode_store import client
from services.fleet.process import Fleet
from services.sim_farm.client import run_collection

Policy = sim_farm_pb2.CollectionPolicy
Summary = episode_store_pb2.EpisodeSummary
REAL_ARM = FLEET_DIR / "kuka-01.yaml"


@dataclass(frozen=True)
class Data:
    """The episodes every row draws from (summaries of the data store)."""

    data_root: Path
    sim: list[Summary]
    randomized: list[Summary]
    sim_validation: list[Summary]
    real_all: list[Summary]
    real_low: list[Summary]
    real_validation: list[Summary]


def collections(settings: Settings) -> dict[str, sim_farm_pb2.CollectionSpec]:
    """The four collections, by id."""
    common = dict(
        num_shards=settings.shards,
        max_steps=settings.max_steps,
        policy=Policy(kind=Policy.KIND_RANDOM),
        skip_stored=True,
    )
    sim = dict(domain=common_pb2.DOMAIN_SIM, render_masks=True, **common)
    specs = {
        "sim": sim_farm_pb2.CollectionSpec(
            num_episodes=settings.sim_episodes,
            randomization=common_pb2.RANDOMIZATION_NONE,
            object_set="train",
            seed=settings.data_seed,
            **sim,
        ),
        "sim-randomized": sim_farm_pb2.CollectionSpec(
            num_episodes=settings.sim_episodes,
            randomization=common_pb2.RANDOMIZATION_VISUAL,
            object_set="train",
            render_canonical=True,
            seed=settings.data_seed + 1,
            **sim,
        ),
        "sim-validation": sim_farm_pb2.CollectionSpec(
            num_episodes=settings.sim_validation_episodes,
            randomization=common_pb2.RANDOMIZATION_NONE,
            object_set="sim-test",
            seed=settings.data_seed + 2,
            **sim,
        ),
        "real": sim_farm_pb2.CollectionSpec(
            num_episodes=settings.real_episodes,
            arm_config_yaml=REAL_ARM.read_text(),
            seed=settings.data_seed + 3,
            **common,
        ),
    }
    # The rows that need randomized data come last: collect it last.
    return {name: specs[name] for name in ("sim", "sim-validation", "real", "sim-randomized")}


@contextlib.contextmanager
def data_fleet(root: Path, workers: int) -> Iterator[tuple[str, str]]:
    """A store and a sim-farm for collecting; yields (store address, farm address)."""
    fleet = Fleet(root / "data")
    try:
        store = fleet.start(
            "episode-store", ["store", "serve"], {"data_dir": str(root / "data" / "store")}
        )
        farm = fleet.start(
            "sim-farm",
            ["sim-farm", "serve"],
            {
                "store_address": store.address,
                "spool_dir": str(root / "data" / "spool"),
                "workers": str(workers),
            },
        )
        yield store.address, farm.address
    finally:
        fleet.stop()


def collect(farm_address: str, collection_id: str, spec: sim_farm_pb2.CollectionSpec) -> dict:
    """Runs (or resumes) one collection to its end; its counts."""
    shown = [-1]

    def progress(collection: sim_farm_pb2.Collection) -> None:
        if collection.episodes_done // 500 != shown[0]:
            shown[0] = collection.episodes_done // 500
            log(f"  {collection_id}: {collection.episodes_done}/{spec.num_episodes}")

    with grpc.insecure_channel(farm_address) as channel:
        stub = sim_farm_pb2_grpc.SimFarmStub(channel)
        collection = run_collection(stub, collection_id, spec, progress, poll_s=2.0)
    return {"episodes": collection.episodes_done, "successes": collection.successes}


def collect_all(
    root: Path,
    shards: int,
    stages: Stages,
    specs: dict[str, sim_farm_pb2.CollectionSpec],
    ids: dict[str, str],
) -> dict[str, list[Summary]]:
    """Runs each collection not yet done (a stage each), then lists their labeled episodes.

    The episodes come by collection name, in the store's order.
    """
    with data_fleet(root, shards) as (store, farm):
        for name, spec in specs.items():
            stages.run(
                f"collect-{name}",
                _spec_settings(spec),
                lambda name=name, spec=spec: collect(farm, ids[name], spec),
            )
        channel, stub = client.connect(store)
        with channel:
            return {
                name: labeled(
                    client.list_all(stub, episode_store_pb2.EpisodeFilter(collection_id=ids[name]))
                )
                for name in specs
            }


def collect_complete(
    root: Path,
    shards: int,
    stages: Stages,
    specs: dict[str, sim_farm_pb2.CollectionSpec],
    prefix: str,
) -> dict[str, list[Summary]]:
    """Each collection's labeled episodes in id order, collected first where missing.

    Each collection's id is `<prefix>-<name>-<key of its spec>`, so other settings
    never mix with these.

    Raises:
        RuntimeError: a collection holds fewer labeled episodes than its spec asks.
    """
    ids = {name: f"{prefix}-{name}-{key(_spec_settings(spec))}" for name, spec in specs.items()}
    found = {
        name: sorted(episodes, key=lambda e: e.episode_id)
        for name, episodes in collect_all(root, shards, stages, specs, ids).items()
    }
    for name, spec in specs.items():
        if len(found[name]) != spec.num_episodes:
            raise RuntimeError(
                f"collection {name}: {len(found[name])} labeled episodes of {spec.num_episodes}"
            )
    return found


def collection_ids(settings: Settings) -> dict[str, str]:
    """Each collection's id.

    It carries the spec's key (the arm file's text included): a collection of other
    settings never mixes with this one, and two runs whose ids agree collected the
    same episodes (every episode's seed follows from the spec).
    """
    return {
        name: f"{name}-{key(_spec_settings(spec))}" for name, spec in collections(settings).items()
    }


def _stratified(episodes: list[Summary], count: int, seed: int) -> list[Summary]:
    """`count` episodes with the success share of `episodes` (at least one of each label)."""
    successes = [e for e in episodes if e.label.success]
    failures = [e for e in episodes if not e.label.success]
    if count < 2 or not successes or not failures:
        raise ValueError(
            f"a budget of {count} real episodes from {len(successes)} successes and "
            f"{len(failures)} failures cannot hold both labels"
        )
    wanted = min(max(1, round(count * len(successes) / len(episodes))), count - 1)
    rng = random.Random(seed)
    chosen = {e.episode_id for e in rng.sample(successes, min(wanted, len(successes)))}
    chosen |= {e.episode_id for e in rng.sample(failures, count - len(chosen))}
    return [e for e in episodes if e.episode_id in chosen]


def needs(rows: list[Row]) -> set[str]:
    """What of the data beyond plain sim `rows` use: "randomized", "real", "low"."""
    wanted = set()
    if any(r.sim in ("randomized", "rcan") for r in rows):
        wanted.add("randomized")
    if any(r.uses_real_labels or r.sim == "graspgan" for r in rows):
        wanted.add("real")
    if any(r.budget == "low" for r in rows):
        wanted.add("low")
    return wanted


def prepare(settings: Settings, root: Path, stages: Stages, wanted: set[str]) -> Data:
    """Collects what is missing, then splits the real episodes by object bin.

    Args:
        settings: The protocol.
        root: The experiment's folder.
        stages: The stage cache.
        wanted: The data beyond plain sim to provide (`needs`); what is not wanted
            is neither collected nor split, and stays empty in the result.
    """
    specs = collections(settings)
    if "randomized" not in wanted:
        del specs["sim-randomized"]
    if not wanted & {"real", "low"}:
        del specs["real"]
    found = collect_all(root, settings.shards, stages, specs, collection_ids(settings))
    real_train, real_validation, low = [], [], []
    if "real" in specs:
        real_train, real_validation = split_episodes(
            found["real"], settings.real_validation_fraction, settings.data_seed
        )
    if "low" in wanted:
        low = _stratified(real_train, settings.low_real_episodes, settings.data_seed)
    return Data(
        data_root=root / "data" / "store",
        sim=found["sim"],
        randomized=found.get("sim-randomized", []),
        sim_validation=found["sim-validation"],
        real_all=real_train,
        real_low=low,
        real_validation=real_validation,
    )


def _spec_settings(spec: sim_farm_pb2.CollectionSpec) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(spec)


def describe(data: Data) -> dict:
    """Episodes and successes of each part, for the report."""

    def count(episodes: list[Summary]) -> dict:
        return {"episodes": len(episodes), "successes": sum(e.label.success for e in episodes)}

    return {
        "sim": count(data.sim),
        "sim_randomized": count(data.randomized),
        "sim_validation": count(data.sim_validation),
        "real_all": count(data.real_all),
        "real_low": count(data.real_low),
        "real_validation": count(data.real_validation),
    }
