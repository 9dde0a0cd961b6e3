"""Labels and queries over gRPC: ListEpisodes filters and pages, Relabel, Stats, the reader."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import timestamp_pb2

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import dataset, selection
from models.episodes import synthetic as samples
from services.episode_store import client

Filter = episode_store_pb2.EpisodeFilter


def _episode(seed: int, robot: str, domain: int, model_version: int, result: int | None = None):
    record = samples.sample_episode(seed, robot_id=robot, domain=domain, num_steps=3)
    record.header.model.CopyFrom(common_pb2.ModelRef(name="grasp_success", version=model_version))
    for step in record.steps:
        step.model.CopyFrom(record.header.model)
    if result is not None:
        record.outcome.result = result
    return record


def _fill(stub) -> list:
    records = [
        _episode(0, "kuka-01", common_pb2.DOMAIN_REAL, 1, common_pb2.GRASP_RESULT_SUCCESS),
        _episode(1, "kuka-01", common_pb2.DOMAIN_REAL, 2, common_pb2.GRASP_RESULT_FAILURE),
        _episode(2, "kuka-02", common_pb2.DOMAIN_REAL, 2, common_pb2.GRASP_RESULT_SUCCESS),
        _episode(3, "kuka-02", common_pb2.DOMAIN_REAL, 2, common_pb2.GRASP_RESULT_UNKNOWN),
        _episode(4, "sim-07", common_pb2.DOMAIN_SIM, 1, common_pb2.GRASP_RESULT_SUCCESS),
        _episode(5, "sim-07", common_pb2.DOMAIN_SIM, 1, common_pb2.GRASP_RESULT_ABORTED),
    ]
    for record in records:
        client.write_episode(stub, record)
    return records


def _ids(stub, flt: Filter) -> list[str]:
    return [e.episode_id for e in client.list_all(stub, flt, page_size=2)]


def test_filters_and_pages(store_stub):
    _fill(store_stub)
    assert _ids(store_stub, Filter()) == [f"sample-{i}" for i in range(6)]
    assert _ids(store_stub, Filter(domain=common_pb2.DOMAIN_SIM)) == ["sample-4", "sample-5"]
    assert _ids(store_stub, Filter(robot_ids=["kuka-02", "sim-07"])) == [
        f"sample-{i}" for i in (2, 3, 4, 5)
    ]
    assert _ids(store_stub, Filter(model=common_pb2.ModelRef(name="grasp_success", version=2))) == [
        "sample-1",
        "sample-2",
        "sample-3",
    ]
    assert _ids(store_stub, Filter(label_state=common_pb2.LABEL_STATE_UNLABELED)) == [
        "sample-3",
        "sample-5",
    ]
    assert _ids(store_stub, Filter(success=True)) == ["sample-0", "sample-2", "sample-4"]
    # sample_episode(seed) starts at 1_700_000_000 + seed seconds.
    since, until = (
        timestamp_pb2.Timestamp(seconds=1_700_000_002),
        timestamp_pb2.Timestamp(seconds=1_700_000_004),
    )
    assert _ids(store_stub, Filter(since=since, until=until)) == ["sample-2", "sample-3"]
    first = store_stub.ListEpisodes(episode_store_pb2.ListEpisodesRequest(page_size=4))
    assert len(first.episodes) == 4 and first.next_page_token
    rest = store_stub.ListEpisodes(
        episode_store_pb2.ListEpisodesRequest(page_size=4, page_token=first.next_page_token)
    )
    assert [e.episode_id for e in rest.episodes] == [
        "sample-4",
        "sample-5",
    ] and not rest.next_page_token


def test_labels_come_from_outcomes_and_relabels_keep_provenance(store_stub):
    _fill(store_stub)
    got = store_stub.GetEpisode(episode_store_pb2.GetEpisodeRequest(episode_id="sample-1"))
    assert got.summary.label.state == common_pb2.LABEL_STATE_AUTO and not got.summary.label.success
    assert got.summary.label.source == "robot:kuka-01"
    relabeled = store_stub.Relabel(
        episode_store_pb2.RelabelRequest(
            episode_id="sample-1",
            success=True,
            reason="object lifted, sensor missed it",
            source="user:ana",
        )
    )
    assert relabeled.summary.label.state == common_pb2.LABEL_STATE_RELABELED
    assert [(h.state, h.success, h.source) for h in relabeled.label_history] == [
        (common_pb2.LABEL_STATE_AUTO, False, "robot:kuka-01"),
        (common_pb2.LABEL_STATE_RELABELED, True, "user:ana"),
    ]
    again = store_stub.GetEpisode(episode_store_pb2.GetEpisodeRequest(episode_id="sample-1"))
    assert list(again.label_history) == list(relabeled.label_history)
    assert _ids(store_stub, Filter(label_state=common_pb2.LABEL_STATE_RELABELED)) == ["sample-1"]


def test_stats_by_robot_domain_and_model(store_stub):
    _fill(store_stub)
    stats = store_stub.Stats(episode_store_pb2.StatsRequest())
    assert (stats.episodes, stats.steps, stats.labeled, stats.successes) == (6, 18, 4, 3)
    assert abs(stats.success_rate - 0.75) < 1e-9
    groups = {
        (g.robot_id, g.model.version): (g.episodes, g.labeled, g.successes) for g in stats.groups
    }
    assert groups == {
        ("kuka-01", 1): (1, 1, 1),
        ("kuka-01", 2): (1, 1, 0),
        ("kuka-02", 2): (2, 1, 1),
        ("sim-07", 1): (2, 1, 1),
    }
    real = store_stub.Stats(
        episode_store_pb2.StatsRequest(filter=Filter(domain=common_pb2.DOMAIN_REAL))
    )
    assert (real.episodes, real.labeled, real.successes) == (4, 3, 2)


def test_reader_uses_current_labels(store_stub, store_flags):
    _fill(store_stub)
    store_stub.Relabel(
        episode_store_pb2.RelabelRequest(
            episode_id="sample-1", success=True, reason="checked", source="user:ana"
        )
    )
    episodes = selection.labeled(client.list_all(store_stub))
    samples_by_episode: dict[str, list[float]] = {}
    for sample in dataset.step_dataset(
        Path(store_flags["data_dir"]), episodes, include_masks=True
    ).as_numpy_iterator():
        samples_by_episode.setdefault(sample[dataset.EPISODE_ID].decode(), []).append(
            sample[dataset.LABEL]
        )
        assert sample[dataset.MASK].shape == (64, 64, 1)
        assert set(sample[dataset.MASK].ravel()) <= {0, 1, 2, 3}
    assert samples_by_episode == {
        "sample-0": [1.0] * 3,
        "sample-1": [1.0] * 3,
        "sample-2": [1.0] * 3,
        "sample-4": [1.0] * 3,
    }
