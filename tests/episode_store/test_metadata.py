"""Tests of the episode store's metadata layer, run alike against SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.protobuf import timestamp_pb2

from graspfleet.v1 import common_pb2, episode_store_pb2
from services.episode_store.metadata import (
    EpisodeConflict,
    EpisodeNotFound,
    MetadataStore,
    open_metadata_store,
)

T0_US = 1_700_000_000_000_000
SECOND_US = 1_000_000

AUTO = common_pb2.LABEL_STATE_AUTO
RELABELED = common_pb2.LABEL_STATE_RELABELED
UNLABELED = common_pb2.LABEL_STATE_UNLABELED
SIM = common_pb2.DOMAIN_SIM
REAL = common_pb2.DOMAIN_REAL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Callable[[], MetadataStore]]:
    """Returns a function that opens a store on this test's database (again and again)."""
    if request.param == "sqlite":
        location = {"sqlite_path": str(tmp_path / "metadata.sqlite")}
    else:
        location = {"postgres_dsn": request.getfixturevalue("postgres_database")}
    opened: list[MetadataStore] = []

    def open_() -> MetadataStore:
        opened.append(open_metadata_store(**location))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def metadata_store(open_store: Callable[[], MetadataStore]) -> MetadataStore:
    return open_store()


def timestamp(micros: int) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromMicroseconds(micros)
    return result


def model(name: str, version: int) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=name, version=version)


def make_summary(
    episode_id: str,
    *,
    robot_id: str = "kuka-1",
    domain: int = REAL,
    randomization: int = common_pb2.RANDOMIZATION_NONE,
    policy: str = "cem",
    header_model: common_pb2.ModelRef | None = None,
    step_models: tuple[common_pb2.ModelRef, ...] = (),
    object_set: str = "train",
    collection_id: str = "c1",
    started_us: int = T0_US,
    num_steps: int = 5,
    stored_bytes: int = 1000,
    shard: str = "",
) -> episode_store_pb2.EpisodeSummary:
    return episode_store_pb2.EpisodeSummary(
        episode_id=episode_id,
        robot_id=robot_id,
        domain=domain,
        randomization=randomization,
        policy=policy,
        model=header_model if header_model is not None else model("grasp", 3),
        step_models=step_models,
        num_steps=num_steps,
        result=common_pb2.GRASP_RESULT_SUCCESS,
        object_ids=["obj-1", "obj-2"],
        object_set=object_set,
        seed=2**63 + 7,
        collection_id=collection_id,
        started_at=timestamp(started_us),
        ended_at=timestamp(started_us + 20 * SECOND_US),
        ingested_at=timestamp(started_us + 21 * SECOND_US),
        image_size=common_pb2.ImageSize(width=64, height=64),
        stored_bytes=stored_bytes,
        shard=shard,
        attributes={"bin": "left", "light": "dim"},
    )


def label(success: bool, *, state: int = AUTO, source: str = "robot:kuka-1") -> common_pb2.Label:
    return common_pb2.Label(
        state=state,
        success=success,
        source=source,
        reason="outcome reported by the robot",
        labeled_at=timestamp(T0_US + 30 * SECOND_US),
    )


def ids(summaries: list[episode_store_pb2.EpisodeSummary]) -> list[str]:
    return [summary.episode_id for summary in summaries]


def test_insert_then_get_round_trips_the_summary_and_label(metadata_store: MetadataStore):
    summary = make_summary(
        "ep-1", step_models=(model("grasp", 3), model("grasp", 4)), shard="shards/0001.tfrecord"
    )
    # The store owns these two fields: whatever the caller sets is replaced.
    summary.sequence = 999
    summary.label.CopyFrom(label(False, source="caller"))
    first = label(True)

    result = metadata_store.insert(summary, "digest-1", first)

    expected = episode_store_pb2.EpisodeSummary()
    expected.CopyFrom(summary)
    expected.label.CopyFrom(first)
    expected.sequence = result.summary.sequence
    assert not result.duplicate
    assert result.summary.sequence > 0
    assert result.summary == expected
    stored, history = metadata_store.get("ep-1")
    assert stored == expected
    assert history == [first]
    assert metadata_store.digest("ep-1") == "digest-1"
    assert metadata_store.count() == 1
    assert metadata_store.shards() == {"shards/0001.tfrecord"}


def test_repeated_insert_with_same_digest_is_a_duplicate(metadata_store: MetadataStore):
    first = metadata_store.insert(make_summary("ep-1"), "digest-1", label(True))

    again = metadata_store.insert(
        make_summary("ep-1", robot_id="other"), "digest-1", label(False, source="resend")
    )

    assert again.duplicate
    assert again.summary == first.summary
    assert metadata_store.count() == 1
    assert metadata_store.get("ep-1") == (first.summary, [label(True)])


def test_same_id_with_another_digest_conflicts(metadata_store: MetadataStore):
    first = metadata_store.insert(make_summary("ep-1"), "digest-1", label(True))

    with pytest.raises(EpisodeConflict):
        metadata_store.insert(make_summary("ep-1"), "digest-2", label(True))

    assert metadata_store.count() == 1
    assert metadata_store.digest("ep-1") == "digest-1"
    assert metadata_store.get("ep-1")[0] == first.summary


def test_concurrent_inserts_of_one_id_store_it_once(metadata_store: MetadataStore):
    threads = 8
    start = threading.Barrier(threads)

    def insert(_: int):
        start.wait()
        return metadata_store.insert(make_summary("ep-1"), "digest-1", label(True))

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(insert, range(threads)))

    assert sorted(result.duplicate for result in results) == [False] + [True] * (threads - 1)
    assert len({result.summary.sequence for result in results}) == 1
    assert metadata_store.count() == 1
    assert len(metadata_store.get("ep-1")[1]) == 1


def test_concurrent_inserts_of_distinct_ids_get_distinct_increasing_sequences(
    metadata_store: MetadataStore,
):
    threads, per_thread = 8, 25
    start = threading.Barrier(threads)

    def insert_many(worker: int) -> list[int]:
        start.wait()
        return [
            metadata_store.insert(
                make_summary(f"ep-{worker}-{i}"), f"digest-{worker}-{i}", label(True)
            ).summary.sequence
            for i in range(per_thread)
        ]

    with ThreadPoolExecutor(threads) as pool:
        sequences = list(pool.map(insert_many, range(threads)))

    for worker_sequences in sequences:
        assert worker_sequences == sorted(worker_sequences)
    every = [sequence for worker_sequences in sequences for sequence in worker_sequences]
    assert len(set(every)) == threads * per_thread
    assert metadata_store.count() == threads * per_thread
    listed = metadata_store.list(episode_store_pb2.EpisodeFilter(), 1000, 0)
    assert [summary.sequence for summary in listed] == sorted(every)


def test_relabel_appends_to_history_and_changes_label_and_stats(metadata_store: MetadataStore):
    inserted = metadata_store.insert(make_summary("ep-1"), "digest-1", label(False)).summary
    assert metadata_store.stats(episode_store_pb2.EpisodeFilter()).successes == 0
    correction = label(True, state=RELABELED, source="alice")

    summary, history = metadata_store.relabel("ep-1", correction)

    assert summary.label == correction
    assert summary.sequence == inserted.sequence
    assert history == [label(False), correction]
    assert metadata_store.get("ep-1") == (summary, history)
    stats = metadata_store.stats(episode_store_pb2.EpisodeFilter())
    assert (stats.labeled, stats.successes, stats.success_rate) == (1, 1, 1.0)
    relabeled = episode_store_pb2.EpisodeFilter(label_state=RELABELED)
    assert ids(metadata_store.list(relabeled, 10, 0)) == ["ep-1"]

    back = label(False, state=RELABELED, source="bob")
    summary, history = metadata_store.relabel("ep-1", back)
    assert summary.label == back
    assert history == [label(False), correction, back]
    assert metadata_store.stats(episode_store_pb2.EpisodeFilter()).successes == 0


def test_unknown_episode_is_not_found(metadata_store: MetadataStore):
    with pytest.raises(EpisodeNotFound):
        metadata_store.get("missing")
    with pytest.raises(EpisodeNotFound):
        metadata_store.relabel("missing", label(True, state=RELABELED))
    assert metadata_store.digest("missing") is None
    assert metadata_store.count() == 0
    assert metadata_store.shards() == set()


def _store_filter_episodes(store: MetadataStore) -> None:
    """Four episodes that differ in every field a filter looks at."""
    store.insert(make_summary("e1"), "d1", label(True))
    store.insert(
        make_summary(
            "e2",
            robot_id="kuka-2",
            domain=SIM,
            randomization=common_pb2.RANDOMIZATION_VISUAL,
            policy="random",
            header_model=common_pb2.ModelRef(),
            step_models=(model("grasp", 4),),
            object_set="procedural",
            collection_id="c2",
            started_us=T0_US + SECOND_US,
        ),
        "d2",
        label(False),
    )
    store.insert(
        make_summary(
            "e3",
            robot_id="kuka-3",
            domain=SIM,
            randomization=common_pb2.RANDOMIZATION_ALL,
            policy="eps-mix",
            header_model=model("other", 1),
            object_set="test",
            collection_id="c2",
            started_us=T0_US + 2 * SECOND_US,
        ),
        "d3",
        label(False, state=UNLABELED),
    )
    store.insert(
        make_summary(
            "e4",
            randomization=common_pb2.RANDOMIZATION_DYNAMICS,
            header_model=model("grasp", 4),
            started_us=T0_US + 3 * SECOND_US,
        ),
        "d4",
        label(True),
    )
    store.relabel("e4", label(False, state=RELABELED, source="alice"))


F = episode_store_pb2.EpisodeFilter
FILTER_CASES = {
    "empty": (F(), ["e1", "e2", "e3", "e4"]),
    "domain": (F(domain=SIM), ["e2", "e3"]),
    "robot_ids": (F(robot_ids=["kuka-1", "kuka-3"]), ["e1", "e3", "e4"]),
    "model_any_version": (F(model=model("grasp", 0)), ["e1", "e2", "e4"]),
    "model_version_from_header_or_steps": (F(model=model("grasp", 4)), ["e2", "e4"]),
    "model_version_header_only": (F(model=model("grasp", 3)), ["e1"]),
    "model_unknown_version": (F(model=model("other", 2)), []),
    "label_state_auto": (F(label_state=AUTO), ["e1", "e2"]),
    "label_state_relabeled": (F(label_state=RELABELED), ["e4"]),
    "label_state_unlabeled": (F(label_state=UNLABELED), ["e3"]),
    "success_true": (F(success=True), ["e1"]),
    "success_false_skips_unlabeled": (F(success=False), ["e2", "e4"]),
    "randomization": (F(randomization=common_pb2.RANDOMIZATION_VISUAL), ["e2"]),
    "object_set": (F(object_set="train"), ["e1", "e4"]),
    "collection_id": (F(collection_id="c2"), ["e2", "e3"]),
    "policy": (F(policy="cem"), ["e1", "e4"]),
    "since_inclusive": (F(since=timestamp(T0_US + SECOND_US)), ["e2", "e3", "e4"]),
    "until_exclusive": (F(until=timestamp(T0_US + 2 * SECOND_US)), ["e1", "e2"]),
    "since_and_until": (
        F(since=timestamp(T0_US + SECOND_US), until=timestamp(T0_US + 2 * SECOND_US)),
        ["e2"],
    ),
    "fields_combine": (F(domain=REAL, success=False), ["e4"]),
}


@pytest.mark.parametrize("case", FILTER_CASES)
def test_filter(metadata_store: MetadataStore, case: str):
    flt, expected = FILTER_CASES[case]
    _store_filter_episodes(metadata_store)

    assert ids(metadata_store.list(flt, 100, 0)) == expected
    assert metadata_store.stats(flt).episodes == len(expected)


def test_pages_follow_after_sequence(metadata_store: MetadataStore):
    for i in range(7):
        robot_id = "kuka-1" if i % 2 == 0 else "kuka-2"
        metadata_store.insert(make_summary(f"ep-{i}", robot_id=robot_id), f"d{i}", label(True))

    def pages(flt: episode_store_pb2.EpisodeFilter) -> list[list[str]]:
        result, after = [], 0
        while page := metadata_store.list(flt, 3, after):
            result.append(ids(page))
            after = page[-1].sequence
        return result

    assert pages(F()) == [["ep-0", "ep-1", "ep-2"], ["ep-3", "ep-4", "ep-5"], ["ep-6"]]
    assert pages(F(robot_ids=["kuka-1"])) == [["ep-0", "ep-2", "ep-4"], ["ep-6"]]


def test_stats_totals_and_groups(metadata_store: MetadataStore):
    episodes = [
        # (id, robot, domain, model, success or None for unlabeled, steps, bytes)
        ("a", "kuka-2", REAL, model("grasp", 3), True, 4, 100),
        ("b", "kuka-2", REAL, model("grasp", 3), False, 6, 200),
        ("c", "kuka-2", REAL, model("grasp", 3), None, 1, 50),
        ("d", "kuka-1", SIM, model("grasp", 4), True, 3, 10),
        ("e", "kuka-1", REAL, model("grasp", 4), True, 2, 20),
        ("f", "kuka-1", REAL, model("grasp", 3), False, 5, 30),
        ("g", "kuka-1", REAL, model("grasp", 3), True, 5, 30),
    ]
    for episode_id, robot_id, domain, header_model, success, steps, size in episodes:
        first = label(False, state=UNLABELED) if success is None else label(success)
        metadata_store.insert(
            make_summary(
                episode_id,
                robot_id=robot_id,
                domain=domain,
                header_model=header_model,
                num_steps=steps,
                stored_bytes=size,
            ),
            f"digest-{episode_id}",
            first,
        )

    stats = metadata_store.stats(F())

    assert (stats.episodes, stats.steps, stats.stored_bytes) == (7, 26, 440)
    assert (stats.labeled, stats.successes) == (6, 4)
    assert stats.success_rate == pytest.approx(4 / 6)
    groups = [
        (g.robot_id, g.domain, g.model.name, g.model.version, g.episodes, g.labeled, g.successes)
        for g in stats.groups
    ]
    # Domains sort by their enum number: SIM (1) before REAL (2).
    assert groups == [
        ("kuka-1", SIM, "grasp", 4, 1, 1, 1),
        ("kuka-1", REAL, "grasp", 3, 2, 2, 1),
        ("kuka-1", REAL, "grasp", 4, 1, 1, 1),
        ("kuka-2", REAL, "grasp", 3, 3, 2, 1),
    ]
    assert [g.success_rate for g in stats.groups] == [1.0, 0.5, 1.0, 0.5]

    only_kuka_2 = metadata_store.stats(F(robot_ids=["kuka-2"]))
    assert (only_kuka_2.episodes, only_kuka_2.labeled, only_kuka_2.successes) == (3, 2, 1)
    assert len(only_kuka_2.groups) == 1
    assert metadata_store.stats(F(robot_ids=["nobody"])) == episode_store_pb2.StatsResponse()


def test_episodes_persist_across_reopen(open_store: Callable[[], MetadataStore]):
    store = open_store()
    first = store.insert(make_summary("ep-1", shard="s/1"), "digest-1", label(True)).summary
    store.relabel("ep-1", label(False, state=RELABELED, source="alice"))
    before = store.get("ep-1")
    store.close()

    reopened = open_store()

    assert reopened.count() == 1
    assert reopened.get("ep-1") == before
    assert reopened.shards() == {"s/1"}
    assert reopened.insert(make_summary("ep-1"), "digest-1", label(True)).duplicate
    second = reopened.insert(make_summary("ep-2"), "digest-2", label(True)).summary
    assert second.sequence > first.sequence
