"""Bad input gets a clear status; the store stays up and what it holds is unharmed."""

from __future__ import annotations

import grpc
import pytest

from graspfleet.v1 import common_pb2, episode_store_pb2
from services.common import images
from services.episode_store import client, samples
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
def test_bad_stream_is_refused_and_nothing_is_harmed(case, store_stub, stored):
    make, code, fragment = CASES[case]
    with pytest.raises(grpc.RpcError) as refused:
        store_stub.WriteEpisode(make(), timeout=10)
    assert refused.value.code() == code, refused.value.details()
    assert fragment in (refused.value.details() or "")
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
