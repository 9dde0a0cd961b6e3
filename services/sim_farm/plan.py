"""A collection's plan and one shard's job: what backends run.

The plan is made from the collection's validated spec and is the same for all its shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from graspfleet.v1 import common_pb2, sim_farm_pb2
from robots.inventory import parse_arm
from robots.names import RANDOMIZATION_NAMES
from services.sim_farm.config import SimFarmConfig

POLICY_NAMES = {
    sim_farm_pb2.CollectionPolicy.KIND_RANDOM: "random",
    sim_farm_pb2.CollectionPolicy.KIND_ORACLE: "oracle",
    sim_farm_pb2.CollectionPolicy.KIND_NOISY_ORACLE: "noisy-oracle",
    sim_farm_pb2.CollectionPolicy.KIND_CEM: "cem",
    sim_farm_pb2.CollectionPolicy.KIND_EPSILON_MIX: "eps-mix",
}

# The JSON types of the plan's fields (bool apart: JSON true is no int here).
_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool}


@dataclass(frozen=True)
class CollectionPlan:
    """What every shard of a collection runs, its defaults resolved by the farm.

    It travels to a local worker process (pickled) and to a Kubernetes shard pod
    (as JSON, `to_json` / `from_json`); each shard takes its share of the
    episodes by its index (`shard_episodes`).

    Attributes:
        collection_id: Names the spool folders and prefixes every episode id.
        num_episodes: Episodes of the whole collection.
        num_shards: Shards it is split into; shard k runs `shard_episodes(k)`.
        seed: The collection's seed: with shard and index, it fixes every episode.
        max_steps: Servo steps per episode.
        domain: "sim" or "proxy-real".
        randomization: A robots.names randomization name ("none", "visual", ...).
        object_set: The objects the bins are filled from.
        objects_per_bin: Objects per bin.
        policy: "random", "oracle", "noisy-oracle", "cem" or "eps-mix".
        epsilon: With eps-mix, the chance of a random command at each step.
        model_label: With cem / eps-mix and no model_version, the label the planner resolves.
        model_version: With cem / eps-mix, this version; 0 resolves model_label.
        width: Image width, pixels.
        height: Image height, pixels.
        render_masks: Store segmentation masks.
        render_canonical: Store canonical renders (RCAN's targets).
        arm_config_yaml: An arm configuration's text; replaces the world fields above.
        evaluation: Tag episodes purpose=evaluation: never training data.
        skip_stored: Resume: episodes the store holds are not run again.
        transform_kind: Refiner kind applied to images before planning ("rcan"), or "".
        transform_label: The transform model's label when transform_version is 0.
        transform_version: The transform model's version; 0 resolves transform_label.
        close_ratio: With cem / eps-mix, the planner's close threshold; 0 its own.
        raise_ratio: With cem / eps-mix, the planner's raise threshold; 0 its own.
    """

    collection_id: str
    num_episodes: int
    num_shards: int
    seed: int
    max_steps: int
    domain: str
    randomization: str
    object_set: str
    objects_per_bin: int
    policy: str
    epsilon: float
    model_label: str
    model_version: int
    width: int
    height: int
    render_masks: bool
    render_canonical: bool
    arm_config_yaml: str = ""
    evaluation: bool = False
    skip_stored: bool = False
    transform_kind: str = ""
    transform_label: str = ""
    transform_version: int = 0
    close_ratio: float = 0.0
    raise_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.num_shards <= max(1, self.num_episodes):
            raise ValueError(
                f"num_shards={self.num_shards}: between 1 and num_episodes={self.num_episodes}"
            )

    def shard_episodes(self, shard: int) -> range:
        """The episode indexes shard `shard` runs: consecutive, the first shards one longer.

        Raises:
            IndexError: no such shard.
        """
        if not 0 <= shard < self.num_shards:
            raise IndexError(
                f"shard {shard}: collection {self.collection_id} has shards "
                f"0 to {self.num_shards - 1}"
            )
        base, extra = divmod(self.num_episodes, self.num_shards)
        first = shard * base + min(shard, extra)
        return range(first, first + base + (1 if shard < extra else 0))

    def fingerprint(self) -> str:
        """A hash of everything that decides the collection's episodes.

        Not the id, nor skip_stored: the same plan resumed under its id has the same
        fingerprint, and a changed model, policy, arm or setting has another.
        """
        data = dataclasses.asdict(self)
        del data["collection_id"], data["skip_stored"]
        # Settings added later count only when set, so that earlier plans keep their prints.
        for name in ("close_ratio", "raise_ratio"):
            if not data[name]:
                del data[name]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """The plan as one line of JSON (`from_json` reads it back)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CollectionPlan:
        """The plan `to_json` wrote.

        Raises:
            ValueError: not a JSON object, a field missing, unknown or of the wrong type.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"the plan is not JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError("the plan is not a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        missing = sorted(
            name
            for name, f in fields.items()
            if name not in data and f.default is dataclasses.MISSING
        )
        if unknown:
            raise ValueError(f"the plan has unknown fields {unknown}: is it from another version?")
        if missing:
            raise ValueError(f"the plan lacks fields {missing}")
        for name, value in data.items():
            kind = _TYPES[str(fields[name].type)]
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"the plan's {name}={value!r} is not a {fields[name].type}")
        return cls(**data)


@dataclass(frozen=True)
class ShardSettings:
    """Where a shard's episodes go and its plans come from: the farm's settings, not the plan's.

    Attributes:
        store_address: episode-store host:port.
        planner_address: servo-planner host:port (cem and eps-mix).
        refiner_address: refiner host:port (an image transform).
        plan_timeout_s: Deadline of one PlanStep, seconds.
        spool_dir: Folder of the spools; the shard's is <spool_dir>/<collection>/shard-<k>.
        spool_max_bytes: The shard's spool cap: at it the shard waits for the store.
        upload_stall_s: The store taking nothing this long fails the shard, seconds.
    """

    store_address: str
    planner_address: str
    refiner_address: str
    plan_timeout_s: float
    spool_dir: str
    spool_max_bytes: int
    upload_stall_s: float


@dataclass(frozen=True)
class ShardJob:
    """One shard of a collection's plan, with the settings it runs under; picklable."""

    plan: CollectionPlan
    shard: int
    settings: ShardSettings

    @property
    def episodes(self) -> range:
        """The episode indexes this shard runs."""
        return self.plan.shard_episodes(self.shard)


def plan_collection(collection_id: str, spec: sim_farm_pb2.CollectionSpec) -> CollectionPlan:
    """The plan of a validated spec whose defaults the farm has filled in."""
    arm = parse_arm(spec.arm_config_yaml, "arm_config_yaml") if spec.arm_config_yaml else None
    if arm is not None:
        domain = arm.domain
    else:
        domain = "sim" if spec.domain == common_pb2.DOMAIN_SIM else "proxy-real"
    return CollectionPlan(
        collection_id=collection_id,
        num_episodes=spec.num_episodes,
        num_shards=spec.num_shards,
        seed=spec.seed,
        max_steps=spec.max_steps,
        domain=domain,
        randomization=RANDOMIZATION_NAMES.get(spec.randomization, "none"),
        object_set=spec.object_set,
        objects_per_bin=spec.objects_per_bin,
        policy=POLICY_NAMES[spec.policy.kind],
        epsilon=spec.policy.epsilon,
        model_label=spec.policy.model.label,
        model_version=spec.policy.model.version,
        width=spec.image_size.width,
        height=spec.image_size.height,
        render_masks=spec.render_masks or spec.domain == common_pb2.DOMAIN_SIM,
        render_canonical=spec.render_canonical,
        arm_config_yaml=spec.arm_config_yaml,
        evaluation=spec.evaluation,
        skip_stored=spec.skip_stored,
        transform_kind=spec.transform.kind,
        transform_label=spec.transform.model.label,
        transform_version=spec.transform.model.version,
        close_ratio=spec.policy.servoing.close_ratio,
        raise_ratio=spec.policy.servoing.raise_ratio,
    )


def shard_settings(config: SimFarmConfig) -> ShardSettings:
    """The settings a local shard runs under: the farm's, with its share of the spool."""
    return ShardSettings(
        store_address=config.store_address,
        planner_address=config.planner_address,
        refiner_address=config.refiner_address,
        plan_timeout_s=config.plan_timeout_s,
        spool_dir=config.spool_dir,
        spool_max_bytes=config.shard_spool_bytes,
        upload_stall_s=config.upload_stall_s,
    )
