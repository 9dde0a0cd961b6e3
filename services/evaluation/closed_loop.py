"""The closed-loop evaluator: contenders grasping the same scenes on one arm configuration.

A contender is a command source: a grasp model version servoed by the
servo-planner's own CEM and heuristics (optionally behind an image transform,
the RCAN canonicalizer), random exploration (the floor), or the privileged
oracle (the ceiling). Each contender runs as one sim-farm collection with the
arm configuration, the scene seed and the shard count of the evaluation, so
every contender meets exactly the same scenes: outcomes pair up by scene seed.
The farm's worker processes run the shards (Kubernetes Jobs where the farm
runs them there); the episodes are stored tagged purpose=evaluation, so no
training run ever reads them. A stopped evaluation resumes: episode ids are
deterministic and stored ones are not run again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from graspfleet.v1 import common_pb2, episode_store_pb2, sim_farm_pb2, sim_farm_pb2_grpc
from models.episodes.shards import EpisodeRecord
from models.scoring import PairedDifference, Rate, paired_difference, wilson
from robots.inventory import parse_arm
from services.common import upstream
from services.episode_store import client
from services.evaluation import servoing
from services.sim_farm.client import run_collection

Policy = sim_farm_pb2.CollectionPolicy
POLICIES = {"cem": Policy.KIND_CEM, "random": Policy.KIND_RANDOM, "oracle": Policy.KIND_ORACLE}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# The grasp model a cem contender's version belongs to: the one the farm's planner policy uses.
GRASP_MODEL = "grasp_success"


@dataclass(frozen=True)
class Contender:
    """One command source to score.

    Attributes:
        name: Row name, unique in the evaluation ([A-Za-z0-9._-], up to 63 characters).
        policy: "cem" (a grasp model through the servo-planner), "random" or "oracle".
        model_version: With "cem": the grasp_success version to plan with.
        transform: With "cem": a refiner kind applied to every image before planning
            ("rcan"), or "" for none.
        transform_version: The refiner model version of the transform.
        close_ratio: With "cem": the servoing's close threshold; 0 the planner's own.
        raise_ratio: With "cem": the servoing's raise threshold; 0 the planner's own.
    """

    name: str
    policy: str = "cem"
    model_version: int = 0
    transform: str = ""
    transform_version: int = 0
    close_ratio: float = 0.0
    raise_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"contender name {self.name!r}: use 1-63 of [A-Za-z0-9._-]")
        if self.policy not in POLICIES:
            raise ValueError(f"contender {self.name}: policy {self.policy!r}; use {list(POLICIES)}")
        if self.policy == "cem" and self.model_version < 1:
            raise ValueError(f"contender {self.name}: cem needs a model version (1 or more)")
        if self.policy != "cem" and (self.model_version or self.transform):
            raise ValueError(f"contender {self.name}: {self.policy} takes no model or transform")
        if self.transform and self.transform_version < 1:
            raise ValueError(f"contender {self.name}: transform needs a refiner version")
        if self.policy != "cem" and (self.close_ratio or self.raise_ratio):
            raise ValueError(f"contender {self.name}: {self.policy} has no servoing to set")


@dataclass(frozen=True)
class EvaluationSpec:
    """The fixed list of paired scenes every contender grasps.

    Attributes:
        evaluation_id: Names the evaluation; collection ids are `<id>.<contender>`.
        arm_config_yaml: The arm configuration's text (robots/evaluation/*.yaml).
        scenes: Scenes (episodes) per contender.
        seed: Scene seed: the same seed, scenes and shards give the same scenes.
        shards: Shards per contender; part of the scene list's identity.
        max_steps: Steps per episode at most (the last one closes).
    """

    evaluation_id: str
    arm_config_yaml: str
    scenes: int
    seed: int
    shards: int = 2
    max_steps: int = 8

    def __post_init__(self) -> None:
        if not NAME.match(self.evaluation_id):
            raise ValueError(f"evaluation id {self.evaluation_id!r}: use 1-63 of [A-Za-z0-9._-]")
        parse_arm(self.arm_config_yaml, f"evaluation {self.evaluation_id}")
        if not 1 <= self.shards <= self.scenes:
            raise ValueError(f"shards={self.shards} must be 1..scenes ({self.scenes})")

    @classmethod
    def from_file(cls, evaluation_id: str, arm_config: str | Path, **kwargs) -> EvaluationSpec:
        """The spec with its arm configuration read from the YAML file `arm_config`."""
        return cls(evaluation_id, Path(arm_config).read_text(), **kwargs)

    def collection_id(self, contender: Contender) -> str:
        """The sim-farm collection that runs `contender`'s episodes of this evaluation."""
        return f"{self.evaluation_id}.{contender.name}"


@dataclass(frozen=True)
class ContenderResult:
    """A contender's outcome per scene seed, its rate, and what its servoing did.

    `servoing` is services.evaluation.servoing.summarize's summary.
    """

    contender: Contender
    outcomes: dict[int, bool] = field(repr=False)
    rate: Rate
    seconds: float
    servoing: dict = field(default_factory=dict, repr=False)


def collection_spec(spec: EvaluationSpec, contender: Contender) -> sim_farm_pb2.CollectionSpec:
    """The sim-farm collection that runs one contender on the evaluation's scenes."""
    policy = Policy(kind=POLICIES[contender.policy])
    if contender.model_version:
        policy.model.CopyFrom(
            common_pb2.ModelRef(name=GRASP_MODEL, version=contender.model_version)
        )
    policy.servoing.close_ratio = contender.close_ratio
    policy.servoing.raise_ratio = contender.raise_ratio
    collection = sim_farm_pb2.CollectionSpec(
        num_episodes=spec.scenes,
        num_shards=spec.shards,
        max_steps=spec.max_steps,
        policy=policy,
        seed=spec.seed,
        arm_config_yaml=spec.arm_config_yaml,
        evaluation=True,
        skip_stored=True,
    )
    if contender.transform:
        collection.transform.kind = contender.transform
        collection.transform.model.version = contender.transform_version
    return collection


def outcomes(store_stub, collection_id: str) -> dict[int, bool]:
    """Scene seed -> success of a collection's stored episodes."""
    found = client.list_all(
        store_stub, episode_store_pb2.EpisodeFilter(collection_id=collection_id)
    )
    return {int(e.seed): e.result == common_pb2.GRASP_RESULT_SUCCESS for e in found}


def servoing_of(store_stub, collection_id: str, floor_z_m: float) -> dict:
    """The servoing summary of a collection's stored episodes (read with their steps)."""
    found = client.list_all(
        store_stub, episode_store_pb2.EpisodeFilter(collection_id=collection_id)
    )
    episodes = []
    for summary in found:
        full = store_stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(episode_id=summary.episode_id, include_steps=True),
            timeout=30,
        )
        record = EpisodeRecord(header=full.header, steps=tuple(full.steps), outcome=full.outcome)
        if record.steps:
            episodes.append(servoing.episode_servoing(record, floor_z_m))
    return servoing.summarize(episodes)


def run_contender(
    farm_stub: sim_farm_pb2_grpc.SimFarmStub,
    store_stub,
    spec: EvaluationSpec,
    contender: Contender,
    on_progress: Callable[[str, int, int], None] | None = None,
    poll_s: float = 1.0,
) -> ContenderResult:
    """Runs (or resumes) one contender to the end of the scene list.

    Raises:
        RuntimeError: the collection failed or was stopped; the message says why.
    """
    started = time.monotonic()
    collection_id = spec.collection_id(contender)

    def progress(collection: sim_farm_pb2.Collection) -> None:
        if on_progress:
            on_progress(contender.name, collection.episodes_done, spec.scenes)

    try:
        run_collection(farm_stub, collection_id, collection_spec(spec, contender), progress, poll_s)
    except RuntimeError as err:
        raise RuntimeError(f"evaluation of {contender.name}: {err}") from None
    found = outcomes(store_stub, collection_id)
    if len(found) != spec.scenes:
        raise RuntimeError(
            f"evaluation of {contender.name}: {len(found)} distinct scenes stored of {spec.scenes}"
        )
    floor_z_m = parse_arm(spec.arm_config_yaml, spec.evaluation_id).world.workspace.low[2]
    return ContenderResult(
        contender,
        found,
        wilson(sum(found.values()), len(found)),
        time.monotonic() - started,
        servoing_of(store_stub, collection_id, floor_z_m),
    )


def evaluate(
    farm_address: str,
    store_address: str,
    spec: EvaluationSpec,
    contenders: Sequence[Contender],
    on_progress: Callable[[str, int, int], None] | None = None,
    on_result: Callable[[ContenderResult], None] | None = None,
) -> list[ContenderResult]:
    """Every contender on the evaluation's scenes, one after the other.

    Raises:
        ValueError: two contenders share a name.
        RuntimeError: a contender's collection failed.
    """
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"contender names must be unique: {names}")
    results = []
    # TLS when GRASPFLEET_TLS_CA is set, like every other client of a deployed fleet.
    with upstream.channel(farm_address) as channel:
        farm_stub = sim_farm_pb2_grpc.SimFarmStub(channel)
        store_channel, store_stub = client.connect(store_address)
        with store_channel:
            for contender in contenders:
                result = run_contender(farm_stub, store_stub, spec, contender, on_progress)
                results.append(result)
                if on_result:
                    on_result(result)
    return results


def compare(a: ContenderResult, b: ContenderResult, seed: int = 0) -> PairedDifference:
    """A minus B, paired by scene, with the bootstrap interval."""
    return paired_difference(a.outcomes, b.outcomes, seed=seed)


def report(spec: EvaluationSpec, results: Sequence[ContenderResult]) -> dict:
    """JSON-ready results: each contender's rate, and every pair's paired difference."""
    rows = [
        {
            "name": r.contender.name,
            "policy": r.contender.policy,
            "model_version": r.contender.model_version,
            "transform": r.contender.transform,
            "transform_version": r.contender.transform_version,
            **r.rate.as_dict(),
            "seconds": round(r.seconds, 1),
            "servoing": r.servoing,
        }
        for r in results
    ]
    pairs = [
        {"a": a.contender.name, "b": b.contender.name, **compare(a, b).as_dict()}
        for i, a in enumerate(results)
        for b in results[i + 1 :]
    ]
    return {
        "evaluation_id": spec.evaluation_id,
        "arm": parse_arm(spec.arm_config_yaml, spec.evaluation_id).id,
        "scenes": spec.scenes,
        "seed": spec.seed,
        "shards": spec.shards,
        "max_steps": spec.max_steps,
        "contenders": rows,
        "paired": pairs,
    }
