"""Evaluation episodes score models; they are never labels the rollout or the retraining count."""

from __future__ import annotations

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes.shards import EVALUATION, PURPOSE
from models.episodes.synthetic import sample_episode
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server


def test_an_evaluation_episode_is_stored_unlabeled_with_its_outcome(tmp_path):
    store = create_server(EpisodeStoreConfig(port=0, data_dir=str(tmp_path), grace_s=0))
    model = common_pb2.ModelRef(name="grasp_success", version=2)
    try:
        channel, stub = client.connect(store.address)
        with channel:
            for seed, purpose in ((1, EVALUATION), (2, "")):
                record = sample_episode(seed, robot_id="sim-farm-0", domain=common_pb2.DOMAIN_REAL)
                record.header.model.CopyFrom(model)
                record.outcome.result = common_pb2.GRASP_RESULT_SUCCESS
                if purpose:
                    record.header.attributes[PURPOSE] = purpose
                client.write_episode(stub, record)
            # What the rollout asks: labeled REAL grasps of the version.
            flt = episode_store_pb2.EpisodeFilter(domain=common_pb2.DOMAIN_REAL, model=model)
            stats = stub.Stats(episode_store_pb2.StatsRequest(filter=flt))
            stored = {e.seed: e for e in client.list_all(stub, flt)}
    finally:
        store.stop(grace_s=0)
    assert (stats.episodes, stats.labeled, stats.successes) == (2, 1, 1)
    evaluation = stored[next(s for s, e in stored.items() if e.attributes.get(PURPOSE))]
    assert evaluation.label.state == common_pb2.LABEL_STATE_UNLABELED
    assert evaluation.result == common_pb2.GRASP_RESULT_SUCCESS  # what the evaluator reads
