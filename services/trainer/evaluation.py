"""Evaluation runs on the trainer's side: checking a request, resolving its versions, its job.

An evaluation is a run of recipe EVALUATION: contenders (grasp model versions
through the servo-planner's CEM, random exploration, the oracle) grasp the same
scenes on one arm configuration, played by the sim-farm
(`services/evaluation/closed_loop.py`). Versions named by label are resolved
here, at submission, like a refining recipe's generator: a queued run
evaluates the versions chosen when it was accepted, and the stored run shows
them. The job (`job/evaluation.py`) is the only part that talks to the sim-farm
and the store while it runs; the trainer calls the farm once more when an
evaluation is cancelled, to stop the collections the job left behind.
"""

from __future__ import annotations

import grpc

from graspfleet.v1 import common_pb2, sim_farm_pb2, sim_farm_pb2_grpc, trainer_pb2
from models.registry import Registry
from robots.inventory import InventoryError, parse_arm
from services.common import logs, names, upstream
from services.common.errors import FailedPrecondition, InvalidArgument
from services.evaluation.closed_loop import GRASP_MODEL, Contender
from services.trainer.config import TrainerConfig
from services.trainer.spec import backend_and_description
from services.trainer.versions import resolve_version

log = logs.get_logger(__name__)

RECIPE = trainer_pb2.RECIPE_EVALUATION
MAX_SCENES = 100_000
MAX_SHARDS = 1000  # the sim-farm's limit
MAX_CONTENDERS = 32
MAX_ARM_YAML = 65536  # the sim-farm's limit
DEFAULT_SHARDS = 2
SIMULATED_DRIVERS = ("sim", "proxy-real")
# The job's environment: where it finds the farm and the store (the trainer's own settings).
FARM_ENV = "GRASPFLEET_SIM_FARM_ADDRESS"
STORE_ENV = "GRASPFLEET_STORE_ADDRESS"
# An evaluation job only follows the farm's collections: a small pod, no GPU.
JOB_CPU = "500m"
JOB_MEMORY = "1Gi"
TRAINING_FIELDS = ("model_name", "data", "params", "gate", "refiner")


def is_evaluation(spec: trainer_pb2.RunSpec) -> bool:
    """Whether the spec is an evaluation (recipe EVALUATION) rather than a training run."""
    return spec.recipe == RECIPE


def normalize(
    spec: trainer_pb2.RunSpec,
    run_id: str,
    config: TrainerConfig,
    backends: tuple[str, ...],
    registry: Registry,
) -> trainer_pb2.RunSpec:
    """A copy of an evaluation's spec with its defaults filled in and its versions resolved.

    Args:
        spec: The RunSpec as submitted (recipe EVALUATION).
        run_id: The run's id; it names the evaluation and its sim-farm collections.
        config: The trainer's settings (the sim-farm, the rcan model's name).
        backends: The backends this trainer can run jobs on.
        registry: Where the contenders' versions are published.

    Raises:
        InvalidArgument: a training field is set, the arm configuration does not
            parse or is a hardware arm, scenes or shards are out of range, or a
            contender is malformed; the message names the field.
        FailedPrecondition: no sim-farm is configured, or the backend is not.
        NotFound: a contender's version or label does not exist.
    """
    spec = trainer_pb2.RunSpec.FromString(spec.SerializeToString())
    training = [f.name for f, _ in spec.ListFields() if f.name in TRAINING_FIELDS]
    if training:
        raise InvalidArgument(
            f"an evaluation trains nothing: leave {', '.join(training)} unset "
            f"({', '.join(TRAINING_FIELDS)} describe a training; evaluation, what to score)"
        )
    if not spec.HasField("evaluation"):
        raise InvalidArgument(
            "recipe EVALUATION needs evaluation: the arm configuration, scenes and contenders"
        )
    backend_and_description(spec, config, backends)
    request = spec.evaluation
    _arm(request.arm_config_yaml)
    if not 1 <= request.scenes <= MAX_SCENES:
        raise InvalidArgument(
            f"evaluation.scenes={request.scenes}: ask for 1 to {MAX_SCENES} scenes per contender"
        )
    request.shards = request.shards or min(DEFAULT_SHARDS, request.scenes)
    if not 1 <= request.shards <= min(request.scenes, MAX_SHARDS):
        raise InvalidArgument(
            f"evaluation.shards={request.shards}: use 1 to the number of scenes "
            f"({request.scenes}), at most {MAX_SHARDS}"
        )
    _check_contenders(request.contenders, run_id, config)
    if not config.sim_farm_address:
        raise FailedPrecondition(
            "this trainer has no sim-farm to play evaluations on: start it with "
            "--sim-farm-address (GRASPFLEET_SIM_FARM_ADDRESS)"
        )
    for contender in request.contenders:
        if contender.HasField("model"):
            _resolve(contender.model, GRASP_MODEL, registry, contender.name, "model")
        if contender.HasField("rcan"):
            _resolve(contender.rcan, config.rcan_model_name, registry, contender.name, "rcan")
    return spec


def _arm(text: str) -> None:
    if not text:
        raise InvalidArgument(
            "evaluation.arm_config_yaml is required: the text of an arm configuration file "
            "(e.g. robots/evaluation/proxy-real-test.yaml)"
        )
    if len(text) > MAX_ARM_YAML:
        raise InvalidArgument(
            f"evaluation.arm_config_yaml is over {MAX_ARM_YAML // 1024} KiB; send one arm's file"
        )
    try:
        arm = parse_arm(text, "evaluation.arm_config_yaml")
    except InventoryError as err:
        raise InvalidArgument(str(err)) from None
    except (TypeError, ValueError, RecursionError) as err:
        # Values YAML allows where the inventory expects names (a list as the driver).
        raise InvalidArgument(
            f"evaluation.arm_config_yaml is not an arm configuration ({type(err).__name__}: {err})"
        ) from None
    if arm.driver not in SIMULATED_DRIVERS:
        raise InvalidArgument(
            f"evaluation.arm_config_yaml: driver {arm.driver!r} is a hardware arm; the sim-farm "
            f"plays {' and '.join(SIMULATED_DRIVERS)} arms only"
        )


def _check_contenders(contenders, run_id: str, config: TrainerConfig) -> None:
    if not 1 <= len(contenders) <= MAX_CONTENDERS:
        raise InvalidArgument(
            f"evaluation.contenders: give 1 to {MAX_CONTENDERS} contenders, e.g. a grasp model "
            "(policy cem) and the random floor (policy random)"
        )
    seen = set()
    for i, c in enumerate(contenders):
        where = f"evaluation.contenders[{i}]"
        named = {"model": c.HasField("model"), "rcan": c.HasField("rcan")}
        for field, ref in (("model", c.model), ("rcan", c.rcan)):
            if named[field] and not (ref.version or ref.label):
                raise InvalidArgument(f"{where}.{field}: name a version or a label")
        try:
            # Contender's own checks; 1 stands for "a version is named" until it is resolved.
            Contender(
                c.name,
                c.policy,
                model_version=int(named["model"]),
                transform="rcan" if named["rcan"] else "",
                transform_version=int(named["rcan"]),
            )
        except ValueError as err:
            raise InvalidArgument(f"{where}: {err}") from None
        if c.name in seen:
            raise InvalidArgument(f"{where}: the name {c.name!r} is taken; names are unique")
        seen.add(c.name)
        if c.model.name not in ("", GRASP_MODEL):
            raise InvalidArgument(
                f"{where}.model.name {c.model.name!r}: the sim-farm plans with model "
                f"{GRASP_MODEL!r}; leave the name empty"
            )
        if c.rcan.name not in ("", config.rcan_model_name):
            raise InvalidArgument(
                f"{where}.rcan.name {c.rcan.name!r}: this trainer's RCAN generator is model "
                f"{config.rcan_model_name!r}; leave the name empty"
            )
        collection = f"{run_id}.{c.name}"
        if len(collection) > names.MAX_NAME:
            raise InvalidArgument(
                f"{where}: the collection id {collection!r} would be over {names.MAX_NAME} "
                "characters; use a shorter contender name or run id"
            )


def _resolve(
    ref: common_pb2.ModelRef, name: str, registry: Registry, contender: str, field: str
) -> None:
    version = resolve_version(registry, name, ref, "model", f"contender {contender} {field}")
    ref.CopyFrom(common_pb2.ModelRef(name=name, version=version, label=ref.label))


def contenders(request: trainer_pb2.EvaluationRequest) -> list[Contender]:
    """The contenders of a normalized request, as the evaluator takes them (the job calls this)."""
    return [
        Contender(
            c.name,
            c.policy,
            model_version=int(c.model.version),
            transform="rcan" if c.rcan.version else "",
            transform_version=int(c.rcan.version),
        )
        for c in request.contenders
    ]


def job_env(config: TrainerConfig) -> dict[str, str]:
    """The environment that tells an evaluation job where the farm and the store are."""
    return {FARM_ENV: config.sim_farm_address, STORE_ENV: config.store_address}


def total_episodes(request: trainer_pb2.EvaluationRequest) -> int:
    """The episodes an evaluation plays: its scenes for each contender."""
    return request.scenes * len(request.contenders)


def queued_message(request: trainer_pb2.EvaluationRequest) -> str:
    """The queued run's message: the contenders, the scenes and the arm."""
    arm = parse_arm(request.arm_config_yaml, "evaluation.arm_config_yaml").id
    shown = ", ".join(
        f"{c.name} ({c.policy}:{c.model.version})" if c.model.version else c.name
        for c in request.contenders
    )
    return f"queued: evaluation of {shown} on {request.scenes} scenes of arm {arm}"


def stop_collections(config: TrainerConfig, run: trainer_pb2.Run) -> None:
    """Stops the sim-farm collections of a cancelled evaluation; episodes stored stay.

    Best effort: a farm that is away or never started a collection is logged, not
    raised, since the run is cancelled either way.
    """
    if not config.sim_farm_address:
        return
    with upstream.channel(config.sim_farm_address) as channel:
        farm = sim_farm_pb2_grpc.SimFarmStub(channel)
        for c in run.spec.evaluation.contenders:
            collection_id = f"{run.run_id}.{c.name}"
            try:
                farm.StopCollection(
                    sim_farm_pb2.StopCollectionRequest(collection_id=collection_id), timeout=10
                )
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    log.warning(
                        "could not stop an evaluation's collection",
                        extra={"collection": collection_id, "error": err.details()},
                    )
