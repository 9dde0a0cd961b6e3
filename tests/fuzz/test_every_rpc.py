"""Random and hostile requests to every RPC of every server: never INTERNAL, nothing stored lost.

The methods come from the services' descriptors, so a new RPC is fuzzed without
touching this file. `FUZZ_EXAMPLES` sets requests per method (`make fuzz`
raises it); `FUZZ_SEED` reproduces a run.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
)

from graspfleet.v1 import (
    common_pb2,
    episode_store_pb2,
    refiner_pb2,
    robot_agent_pb2,
    servo_planner_pb2,
    sim_farm_pb2,
    trainer_pb2,
)
from models.episodes.synthetic import sample_episode
from services.common.images import encode_image
from services.common.server import LIVENESS
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server as create_predictor
from services.refiner.config import RefinerConfig
from services.refiner.server import create_server as create_refiner
from services.robot_agent.config import AgentConfig
from services.robot_agent.server import create_server as create_agent
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.server import create_server as create_farm
from services.trainer.backends import LocalBackend
from services.trainer.client import TERMINAL
from services.trainer.config import TrainerConfig
from services.trainer.server import create_server as create_trainer
from tests.fixtures import models, refiner_models
from tests.fuzz.messages import MessageFuzzer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("FUZZ_SEED", "20261202"))
CALL_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 2.0  # WatchRun follows a run until it ends: read a little, then hang up

# Statuses that say the server broke or gave up, not that the input was wrong.
BROKEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

SERVICES = {
    "episode-store": [episode_store_pb2.DESCRIPTOR.services_by_name["EpisodeStore"]],
    "grasp-predictor": [
        prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
        model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
    ],
    "servo-planner": [servo_planner_pb2.DESCRIPTOR.services_by_name["ServoPlanner"]],
    "refiner": [refiner_pb2.DESCRIPTOR.services_by_name["Refiner"]],
    "sim-farm": [sim_farm_pb2.DESCRIPTOR.services_by_name["SimFarm"]],
    "trainer": [trainer_pb2.DESCRIPTOR.services_by_name["Trainer"]],
    "robot-agent": [robot_agent_pb2.DESCRIPTOR.services_by_name["RobotAgent"]],
}
# TensorFlow Serving methods the predictor does not offer: UNIMPLEMENTED is their right answer.
NOT_OFFERED = {"Classify", "Regress", "MultiInference", "HandleReloadConfigRequest"}
METHODS = [
    (server, method)
    for server, services in SERVICES.items()
    for service in services
    for method in service.methods
]


def _valid_requests(seeded_id: str) -> dict[str, list]:
    """Requests each method accepts, by method full name: the fuzz mutates them to get past
    the first checks. Calls that change stored labels have none (the fuzz must not relabel
    the episodes it checks); nor do those that start collections or training runs."""
    import tensorflow as tf

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = encode_image(pixels)
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "grasp_success"
    predict.inputs["x0"].CopyFrom(tf.make_tensor_proto(pixels[None]))
    predict.inputs["xt"].CopyFrom(tf.make_tensor_proto(pixels[None]))
    predict.inputs["motions"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4, 5), np.float32)))
    spec = model_pb2.ModelSpec(name="grasp_success")
    plan = servo_planner_pb2.PlanStepRequest(
        robot_id="kuka-01",
        x0=image,
        xt=image,
        current_pose=common_pb2.Pose(position_m=common_pb2.Vec3(x=0.6, y=0.07, z=0.3)),
        workspace=common_pb2.Workspace(
            min_m=common_pb2.Vec3(x=0.45, y=-0.12, z=0.08),
            max_m=common_pb2.Vec3(x=0.83, y=0.27, z=0.40),
        ),
        model=common_pb2.ModelRef(name="grasp_success"),
        seed=7,
    )
    return {
        "graspfleet.v1.EpisodeStore.WriteEpisode": [
            list(client.episode_requests(sample_episode(seed, num_steps=2)))
            for seed in range(100, 103)
        ],
        "graspfleet.v1.EpisodeStore.GetEpisode": [
            episode_store_pb2.GetEpisodeRequest(episode_id=seeded_id, include_steps=True)
        ],
        "graspfleet.v1.EpisodeStore.ListEpisodes": [
            episode_store_pb2.ListEpisodesRequest(page_size=3)
        ],
        "graspfleet.v1.EpisodeStore.Stats": [episode_store_pb2.StatsRequest()],
        "tensorflow.serving.PredictionService.Predict": [predict],
        "tensorflow.serving.PredictionService.GetModelMetadata": [
            get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=spec, metadata_field=["signature_def"]
            )
        ],
        "tensorflow.serving.ModelService.GetModelStatus": [
            get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        ],
        "graspfleet.v1.ServoPlanner.PlanStep": [plan],
        "graspfleet.v1.Refiner.Refine": [
            refiner_pb2.RefineRequest(mode=refiner_pb2.REFINER_MODE_GRASPGAN, images=[image])
        ],
        "graspfleet.v1.Trainer.ListRuns": [trainer_pb2.ListRunsRequest(page_size=5)],
        "graspfleet.v1.Trainer.ListModelVersions": [
            trainer_pb2.ListModelVersionsRequest(name="grasp_success")
        ],
        "graspfleet.v1.Trainer.ListLabelChanges": [
            trainer_pb2.ListLabelChangesRequest(name="grasp_success", label="stable")
        ],
    }


def _read(stub, episode_id: str) -> bytes:
    request = episode_store_pb2.GetEpisodeRequest(episode_id=episode_id, include_steps=True)
    return stub.GetEpisode(request, timeout=10).SerializeToString(deterministic=True)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """All seven servers on loopback, the store holding 6 episodes, authentication off so the
    fuzz reaches past the token check."""
    tmp = tmp_path_factory.mktemp("fuzz")
    models.publish(tmp / "models", 1, bias=0.0)
    refiner_models.publish(tmp / "refiners")  # so that Refine gets past "no generator yet"
    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(tmp / "store"), grace_s=0))
    channel, stub = client.connect(store.address)
    with channel:
        for seed in range(6):
            client.write_episode(stub, sample_episode(seed, num_steps=3))
        seeded = {
            summary.episode_id: _read(stub, summary.episode_id)
            for summary in client.list_all(stub, episode_store_pb2.EpisodeFilter())
        }
    shards = _tree_digest(Path(store.config.data_dir) / "shards")
    predictor = create_predictor(
        PredictorConfig(port=0, model_base_path=str(tmp / "models"), settle_s=0)
    )
    planner = create_planner(PlannerConfig(port=0, predictor_address=predictor.address))
    servers = {
        "episode-store": store,
        "grasp-predictor": predictor,
        "servo-planner": planner,
        "refiner": create_refiner(
            RefinerConfig(port=0, model_base_path=str(tmp / "refiners"), settle_s=0)
        ),
        "sim-farm": create_farm(
            SimFarmConfig(port=0, store_address=store.address, spool_dir=str(tmp / "farm-spool"))
        ),
        "trainer": create_trainer(
            TrainerConfig(
                port=0,
                grace_s=0.0,
                state_dir=str(tmp / "trainer"),
                model_base=str(tmp / "models"),
                store_address=store.address,
                store_data_dir=str(tmp / "store"),
                rollout_interval_s=0.0,
                k8s_api="off",
                cancel_grace_s=1.0,
            )
        ),
    }
    agent_server, _ = create_agent(
        AgentConfig(
            port=0,
            robot_id="kuka-01",
            planner_address=planner.address,
            store_address=store.address,
            spool_dir=str(tmp / "agent-spool"),
            episodes=1,
            max_steps=2,
            plan_timeout_s=2.0,
        )
    )
    servers["robot-agent"] = agent_server
    valid = _valid_requests(next(iter(seeded)))
    yield {"servers": servers, "seeded": seeded, "shards": shards, "valid": valid}
    _stop_what_the_fuzz_started(servers)
    for server in servers.values():
        server.stop(grace_s=0)


def _stop_what_the_fuzz_started(servers) -> None:
    """Fuzzed requests that were valid started collections and runs: end them."""
    with grpc.insecure_channel(servers["sim-farm"].address) as channel:
        farm = channel.unary_unary(
            "/graspfleet.v1.SimFarm/ListCollections",
            request_serializer=sim_farm_pb2.ListCollectionsRequest.SerializeToString,
            response_deserializer=sim_farm_pb2.ListCollectionsResponse.FromString,
        )
        stop = channel.unary_unary(
            "/graspfleet.v1.SimFarm/StopCollection",
            request_serializer=sim_farm_pb2.StopCollectionRequest.SerializeToString,
            response_deserializer=sim_farm_pb2.Collection.FromString,
        )
        for collection in farm(sim_farm_pb2.ListCollectionsRequest(), timeout=10).collections:
            stop(sim_farm_pb2.StopCollectionRequest(collection_id=collection.collection_id))
    jobs = set()
    with grpc.insecure_channel(servers["trainer"].address) as channel:
        list_runs = channel.unary_unary(
            "/graspfleet.v1.Trainer/ListRuns",
            request_serializer=trainer_pb2.ListRunsRequest.SerializeToString,
            response_deserializer=trainer_pb2.ListRunsResponse.FromString,
        )
        cancel = channel.unary_unary(
            "/graspfleet.v1.Trainer/CancelRun",
            request_serializer=trainer_pb2.CancelRunRequest.SerializeToString,
            response_deserializer=trainer_pb2.Run.FromString,
        )
        for run in list_runs(trainer_pb2.ListRunsRequest(page_size=500), timeout=10).runs:
            if run.state not in TERMINAL:
                cancel(trainer_pb2.CancelRunRequest(run_id=run.run_id), timeout=10)
            if run.job.startswith("local:"):
                jobs.add(run.job)
    for handle in jobs:
        LocalBackend().cancel(handle)


def _call(channel: grpc.Channel, method, fuzzer: MessageFuzzer, valid: list) -> grpc.StatusCode:
    """One fuzzed call of `method` (every other one a mutated valid request, where the method
    has some); the status it ended with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    serialize, parse = request_cls.SerializeToString, response_cls.FromString
    try:
        mutate = valid and fuzzer.rng.random() < 0.5
        if method.client_streaming:
            if mutate:
                requests = list(fuzzer.rng.choice(valid))
                at = fuzzer.rng.randrange(len(requests))
                requests[at] = fuzzer.mutate(requests[at])
            else:
                requests = [fuzzer.message(request_cls) for _ in range(fuzzer.rng.randint(0, 3))]
            call = channel.stream_unary(path, serialize, parse)
            call(iter(requests), timeout=CALL_TIMEOUT_S)
        elif method.server_streaming:
            call = channel.unary_stream(path, serialize, parse)
            try:
                request = fuzzer.mutate(fuzzer.rng.choice(valid)) if mutate else None
                for _ in call(request or fuzzer.message(request_cls), timeout=STREAM_TIMEOUT_S):
                    pass
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return grpc.StatusCode.OK  # still following a live run: that is its job
                raise
        else:
            call = channel.unary_unary(path, serialize, parse)
            request = fuzzer.mutate(fuzzer.rng.choice(valid)) if mutate else None
            call(request or fuzzer.message(request_cls), timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        assert error.code() not in BROKEN, (
            f"{path} answered {error.code().name}: {error.details()!r} "
            f"(reproduce with FUZZ_SEED={SEED})"
        )
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("server", "method"), METHODS, ids=[f"{s}:{m.name}" for s, m in METHODS])
def test_fuzzed_requests_get_a_client_status_and_the_server_stays_up(fleet, server, method):
    """Every answer is a status the caller can act on; the server is alive afterwards."""
    address = fleet["servers"][server].address
    fuzzer = MessageFuzzer(zlib.crc32(f"{SEED}:{method.full_name}".encode()))
    with grpc.insecure_channel(address) as channel:
        valid = fleet["valid"].get(method.full_name, [])
        codes = [_call(channel, method, fuzzer, valid) for _ in range(EXAMPLES)]
        if method.name in NOT_OFFERED:
            assert set(codes) == {grpc.StatusCode.UNIMPLEMENTED}
        else:
            assert grpc.StatusCode.UNIMPLEMENTED not in codes
        # Alive, not ready: a server without a model is rightly not ready, before and after.
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=LIVENESS), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_stored_episodes_are_byte_identical_after_the_fuzz(fleet):
    """Runs last in this module: every episode stored before the fuzz reads back unchanged,
    and no shard written before it was altered or removed."""
    store = fleet["servers"]["episode-store"]
    channel, stub = client.connect(store.address)
    with channel:
        for episode_id, before in fleet["seeded"].items():
            assert _read(stub, episode_id) == before
    after = _tree_digest(Path(store.config.data_dir) / "shards")
    assert {name: after.get(name) for name in fleet["shards"]} == fleet["shards"]
