"""Bad input gets a clear status; the store stays up and what it holds is unharmed."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import pytest

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import synthetic as samples
from services.common import images
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server

Request = episode_store_pb2.WriteEpisodeRequest
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _stream(record, *, header=None, steps=None, outcome=None, extra=()):
    yield Request(header=header or record.header)
    for step in record.steps if steps is None else steps:
        yield Request(step=step)
    yield Request(outcome=outcome or record.outcome)
    yield from extra


def _copy(message, **changes):
    copy = type(message)()
    copy.CopyFrom(message)
    for path, value in changes.items():
        target = copy
        *parents, leaf = path.split("__")
        for name in parents:
            target = getattr(target, name)
        if hasattr(value, "DESCRIPTOR"):
            getattr(target, leaf).CopyFrom(value)
        else:
            setattr(target, leaf, value)
    return copy


def _with_step(record, index, step):
    steps = list(record.steps)
    steps[index] = step
    return steps


R = samples.sample_episode(7)
SMALL_PNG = images.encode_image(images.decode_image(R.header.x0)[:32, :32])

CASES = {
    "step before header": (
        lambda: iter([Request(step=R.steps[0])]),
        INVALID,
        "send the header first",
    ),
    "empty stream": (lambda: iter([]), INVALID, "stream was empty"),
    "no outcome": (
        lambda: iter([Request(header=R.header), Request(step=R.steps[0])]),
        INVALID,
        "without an outcome",
    ),
    "steps after the outcome": (
        lambda: _stream(R, extra=[Request(step=R.steps[0])]),
        INVALID,
        "after the outcome",
    ),
    "second header": (
        lambda: iter([Request(header=R.header), Request(header=R.header)]),
        INVALID,
        "second header",
    ),
    "unknown image encoding": (
        lambda: _stream(R, header=_copy(R.header, x0__encoding=9)),
        INVALID,
        "header.x0.encoding=9 is not a known value",
    ),
    "unspecified image encoding": (
        lambda: _stream(R, header=_copy(R.header, x0__encoding=0)),
        INVALID,
        "header.x0.encoding is not set",
    ),
    "RAW bytes do not match the size": (
        lambda: _stream(R, header=_copy(R.header, x0__encoding=common_pb2.Image.ENCODING_RAW)),
        INVALID,
        "needs 12288 bytes",
    ),
    "PNG smaller than declared": (
        lambda: _stream(R, header=_copy(R.header, x0__data=SMALL_PNG.data)),
        INVALID,
        "declared 64x64",
    ),
    "JPEG label on PNG data": (
        lambda: _stream(R, header=_copy(R.header, x0__encoding=common_pb2.Image.ENCODING_JPEG)),
        INVALID,
        "encoding says JPEG but the data is PNG",
    ),
    "step image of another size": (
        lambda: _stream(R, steps=_with_step(R, 2, _copy(R.steps[2], image=SMALL_PNG))),
        INVALID,
        "all images of an episode must have one size",
    ),
    "mask with three channels": (
        lambda: _stream(R, header=_copy(R.header, x0_mask=R.header.x0)),
        INVALID,
        "x0_mask.channels=3",
    ),
    "robot id that climbs out of the shard folder": (
        lambda: _stream(R, header=_copy(R.header, robot_id="..")),
        INVALID,
        "header.robot_id '..' is not a valid name",
    ),
    "robot id with a path separator": (
        lambda: _stream(R, header=_copy(R.header, robot_id="kuka/../../x")),
        INVALID,
        "header.robot_id",
    ),
    "unknown domain": (
        lambda: _stream(R, header=_copy(R.header, domain=7)),
        INVALID,
        "header.domain=7",
    ),
    "unknown command kind": (
        lambda: _stream(R, steps=_with_step(R, 0, _copy(R.steps[0], command__kind=42))),
        INVALID,
        "steps[0].command.kind=42",
    ),
    "unknown grasp result": (
        lambda: _stream(R, outcome=_copy(R.outcome, result=99)),
        INVALID,
        "outcome.result=99",
    ),
    "steps out of order": (
        lambda: _stream(R, steps=[R.steps[1], R.steps[0]]),
        INVALID,
        "expected 0",
    ),
    "outcome counts other steps": (
        lambda: _stream(R, outcome=_copy(R.outcome, num_steps=3)),
        INVALID,
        "outcome.num_steps=3",
    ),
    "bad episode id": (
        lambda: _stream(R, header=_copy(R.header, episode_id="../etc/passwd")),
        INVALID,
        "header.episode_id",
    ),
    "NaN pose": (
        lambda: _stream(R, steps=_with_step(R, 1, _copy(R.steps[1], pose__yaw_rad=float("nan")))),
        INVALID,
        "steps[1].pose has a NaN",
    ),
    "rotation not a unit sine/cosine": (
        lambda: _stream(
            R, steps=_with_step(R, 1, _copy(R.steps[1], command__motion__cos_dyaw=3.0))
        ),
        INVALID,
        "sin_dyaw^2 + cos_dyaw^2",
    ),
    "missing x0": (
        lambda: _stream(
            R,
            header=common_pb2.EpisodeHeader(
                episode_id="no-x0", robot_id="arm", domain=common_pb2.DOMAIN_SIM
            ),
        ),
        INVALID,
        "header.x0 is missing",
    ),
    "start time past year 9999": (
        lambda: _stream(R, header=_copy(R.header, started_at__seconds=253402300800)),
        INVALID,
        "header.started_at.seconds=253402300800 is outside the Timestamp range",
    ),
    "start time with negative nanos": (
        lambda: _stream(R, header=_copy(R.header, started_at__nanos=-1)),
        INVALID,
        "header.started_at.nanos=-1",
    ),
    "step time before year 1": (
        lambda: _stream(R, steps=_with_step(R, 2, _copy(R.steps[2], time__seconds=-(10**12)))),
        INVALID,
        "steps[2].time.seconds=-1000000000000",
    ),
    "end time with a second of nanos": (
        lambda: _stream(R, outcome=_copy(R.outcome, ended_at__nanos=10**9)),
        INVALID,
        "outcome.ended_at.nanos=1000000000",
    ),
    "oversized message": (
        lambda: _stream(R, header=_copy(R.header, x0__data=b"\0" * (5 * 1024 * 1024))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
}


@pytest.fixture
def stored(store_stub):
    """An episode stored before the bad input arrives."""
    original = samples.sample_episode(1, episode_id="kept")
    client.write_episode(store_stub, original)
    return original


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_stream_is_refused_and_nothing_is_harmed(case, store_stub, store_flags, stored):
    make, code, fragment = CASES[case]
    shards_before = sorted((Path(store_flags["data_dir"]) / "shards").rglob("*"))
    with pytest.raises(grpc.RpcError) as refused:
        store_stub.WriteEpisode(make(), timeout=10)
    assert refused.value.code() == code, refused.value.details()
    assert fragment in (refused.value.details() or "")
    # Refused before anything was written: no shard left behind without metadata.
    assert sorted((Path(store_flags["data_dir"]) / "shards").rglob("*")) == shards_before
    # The store is still up, stored nothing new, and the earlier episode is intact.
    stats = store_stub.Stats(episode_store_pb2.StatsRequest())
    assert stats.episodes == 1
    kept = store_stub.GetEpisode(
        episode_store_pb2.GetEpisodeRequest(episode_id="kept", include_steps=True)
    )
    assert list(kept.steps) == list(stored.steps) and kept.header == stored.header
    assert client.write_episode(store_stub, samples.sample_episode(2)).duplicate is False


def test_too_many_steps_is_resource_exhausted(tmp_path):
    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(tmp_path), max_steps=5))
    channel, stub = client.connect(server.address)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            client.write_episode(stub, samples.sample_episode(3, num_steps=6))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "more than 5 steps" in refused.value.details()
        assert client.write_episode(stub, samples.sample_episode(4, num_steps=5)).num_steps == 5
    finally:
        channel.close()
        server.stop(grace_s=0)


def test_bad_queries(store_stub, stored):
    with pytest.raises(grpc.RpcError) as missing:
        store_stub.GetEpisode(episode_store_pb2.GetEpisodeRequest(episode_id="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    for request, fragment in (
        (episode_store_pb2.ListEpisodesRequest(page_token="garbage"), "page_token"),
        (episode_store_pb2.ListEpisodesRequest(page_size=5000), "page_size=5000"),
        (
            episode_store_pb2.ListEpisodesRequest(filter=episode_store_pb2.EpisodeFilter(domain=9)),
            "filter.domain=9",
        ),
    ):
        with pytest.raises(grpc.RpcError) as bad:
            store_stub.ListEpisodes(request)
        assert bad.value.code() == INVALID and fragment in bad.value.details()
    with pytest.raises(grpc.RpcError) as no_reason:
        store_stub.Relabel(
            episode_store_pb2.RelabelRequest(episode_id="kept", success=True, source="user:a")
        )
    assert no_reason.value.code() == INVALID
    with pytest.raises(grpc.RpcError) as unknown:
        store_stub.Relabel(
            episode_store_pb2.RelabelRequest(
                episode_id="nope", success=True, source="user:a", reason="x"
            )
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def _filter_with(**times) -> episode_store_pb2.EpisodeFilter:
    flt = episode_store_pb2.EpisodeFilter()
    for path, value in times.items():
        name, field = path.split("__")
        setattr(getattr(flt, name), field, value)
    return flt


@pytest.mark.parametrize(
    ("times", "fragment"),
    [
        ({"until__seconds": 10**12}, "filter.until.seconds=1000000000000"),
        ({"since__seconds": -(10**12)}, "filter.since.seconds=-1000000000000"),
        ({"since__nanos": 10**9}, "filter.since.nanos=1000000000"),
        ({"until__nanos": -1}, "filter.until.nanos=-1"),
    ],
)
def test_out_of_range_times_in_a_filter_are_invalid_arguments(store_stub, stored, times, fragment):
    flt = _filter_with(**times)
    for call, request in (
        (store_stub.Stats, episode_store_pb2.StatsRequest(filter=flt)),
        (store_stub.ListEpisodes, episode_store_pb2.ListEpisodesRequest(filter=flt)),
    ):
        with pytest.raises(grpc.RpcError) as bad:
            call(request, timeout=10)
        assert bad.value.code() == INVALID, bad.value.details()
        assert fragment in bad.value.details()


@pytest.mark.parametrize(
    "value", ["9" * 30, str(2**63), "-1", "\u0661\u0662", " 1", "1e3", ""], ids=repr
)
def test_page_tokens_this_store_never_issued_are_invalid_arguments(store_stub, stored, value):
    token = base64.urlsafe_b64encode(f"after:{value}".encode()).decode()
    with pytest.raises(grpc.RpcError) as bad:
        store_stub.ListEpisodes(episode_store_pb2.ListEpisodesRequest(page_token=token), timeout=10)
    assert bad.value.code() == INVALID, bad.value.details()
    assert "page_token" in bad.value.details() and "start again without it" in bad.value.details()


def test_the_largest_page_token_is_a_valid_empty_page(store_stub, stored):
    token = base64.urlsafe_b64encode(f"after:{2**63 - 1}".encode()).decode()
    page = store_stub.ListEpisodes(episode_store_pb2.ListEpisodesRequest(page_token=token))
    assert not page.episodes and not page.next_page_token
