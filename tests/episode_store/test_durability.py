"""The store under load and a crash: concurrent writers, resends, SIGKILL mid-stream, restart."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from graspfleet.v1 import episode_store_pb2
from models.episodes import dataset
from models.episodes import synthetic as samples
from services.common import images
from services.episode_store import client
from services.episode_store.metadata import open_metadata_store

# Enough that a third are acknowledged before the kill and dozens are still in flight.
NUM_EPISODES = 80
WRITERS = 8
RESENDS = 20
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


class Fleet:
    """Writers that follow the store to its new address after a restart and retry until acknowledged."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.responses: dict[str, episode_store_pb2.WriteEpisodeResponse] = {}
        self.lock = threading.Lock()

    def send(self, record, deadline_s: float = 120.0) -> episode_store_pb2.WriteEpisodeResponse:
        give_up = time.monotonic() + deadline_s
        while True:
            channel, stub = client.connect(self.address)
            try:
                with channel:
                    response = client.write_episode(stub, record, timeout_s=10)
                with self.lock:
                    self.responses[record.header.episode_id] = response
                return response
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or time.monotonic() > give_up:
                    raise
                time.sleep(0.2)


def _interrupted_stream(record, reached: threading.Event, release: threading.Event):
    """Sends the header and half the steps, then blocks: the server dies while it waits."""
    yield episode_store_pb2.WriteEpisodeRequest(header=record.header)
    for step in record.steps[: len(record.steps) // 2]:
        yield episode_store_pb2.WriteEpisodeRequest(step=step)
    reached.set()
    release.wait(60)


def _pixels(image) -> np.ndarray:
    array = images.decode_image(image)
    return array if array.ndim == 3 else array[..., None]


@pytest.mark.slow
def test_80_episodes_8_writers_resends_and_a_kill_mid_stream(store_process, store_flags, tmp_path):
    records = [
        samples.sample_episode(i, robot_id=f"arm-{i % WRITERS}") for i in range(NUM_EPISODES)
    ]
    interrupted = records[-1]
    store_process.start()
    fleet = Fleet(store_process.address)

    # 8 writers stream all but the last episode in the background.
    pool = ThreadPoolExecutor(WRITERS)
    futures = [pool.submit(fleet.send, r) for r in records[:-1]]
    while len(fleet.responses) < NUM_EPISODES // 3:
        time.sleep(0.05)

    # One stream is half sent when the store is SIGKILLed; writers are mid-flight too.
    reached, release = threading.Event(), threading.Event()
    channel, stub = client.connect(store_process.address)
    broken = pool.submit(
        stub.WriteEpisode, _interrupted_stream(interrupted, reached, release), timeout=60
    )
    assert reached.wait(30)
    time.sleep(0.2)
    store_process.kill()
    with pytest.raises(grpc.RpcError) as failure:
        broken.result(30)
    assert failure.value.code() in RETRYABLE
    release.set()
    channel.close()

    store_process.start()
    fleet.address = store_process.address
    for future in futures:
        # A retry after the crash may be acknowledged as a duplicate: either way it is stored once.
        assert future.result(180).num_steps == 10
    fleet.send(interrupted)
    pool.shutdown()

    # Explicit resends are acknowledged as duplicates and store nothing new.
    for record in records[:RESENDS]:
        response = fleet.send(record)
        assert response.duplicate
        assert response.num_steps == len(record.steps)

    # A different episode under a stored id is refused.
    impostor = samples.sample_episode(1000, episode_id=records[0].header.episode_id)
    with pytest.raises(grpc.RpcError) as refused:
        fleet.send(impostor)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS

    channel, stub = client.connect(store_process.address)
    with channel:
        stored = list(client.list_all(stub))
        stats = stub.Stats(episode_store_pb2.StatsRequest())
        assert sorted(e.episode_id for e in stored) == sorted(r.header.episode_id for r in records)
        assert stats.episodes == NUM_EPISODES
        assert stats.steps == sum(len(r.steps) for r in records)
        by_id = {r.header.episode_id: r for r in records}
        for summary in stored:
            got = stub.GetEpisode(
                episode_store_pb2.GetEpisodeRequest(
                    episode_id=summary.episode_id, include_steps=True
                )
            )
            original = by_id[summary.episode_id]
            assert got.header == original.header
            assert list(got.steps) == list(original.steps)
            assert got.outcome == original.outcome

    # No half-written episode anywhere: every shard on disk is referenced, nothing is staged.
    data_root = Path(store_flags["data_dir"])
    on_disk = {str(p.relative_to(data_root)) for p in (data_root / "shards").rglob("*.tfrecord")}
    metadata = open_metadata_store(
        postgres_dsn=store_flags.get("postgres_dsn"),
        sqlite_path=None if "postgres_dsn" in store_flags else str(data_root / "episodes.sqlite"),
    )
    try:
        assert on_disk == metadata.shards()
    finally:
        metadata.close()
    assert not list((data_root / "staging").iterdir())

    # The training pipeline reads every step back with byte-identical pixels.
    seen = 0
    for sample in dataset.step_dataset(data_root, stored).as_numpy_iterator():
        original = by_id[sample[dataset.EPISODE_ID].decode()]
        step = original.steps[sample[dataset.STEP]]
        np.testing.assert_array_equal(sample[dataset.XT], _pixels(step.image))
        np.testing.assert_array_equal(sample[dataset.X0], _pixels(original.header.x0))
        assert sample[dataset.LABEL] == float(original.outcome.result == 1)
        seen += 1
    assert seen == stats.steps
