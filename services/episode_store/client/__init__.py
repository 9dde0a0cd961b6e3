"""Client helpers for the episode store: stream an episode, page through a query."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from graspfleet.v1 import episode_store_pb2, episode_store_pb2_grpc
from models.episodes.shards import EpisodeRecord
from services.common import upstream

# Trailing metadata of a refusal that is about the store's load, not the episode: the
# milliseconds to wait before sending it again.
RETRY_AFTER_KEY = "retry-after-ms"


def episode_requests(record: EpisodeRecord) -> Iterator[episode_store_pb2.WriteEpisodeRequest]:
    """The WriteEpisode stream for one episode: header, steps, outcome."""
    yield episode_store_pb2.WriteEpisodeRequest(header=record.header)
    for step in record.steps:
        yield episode_store_pb2.WriteEpisodeRequest(step=step)
    yield episode_store_pb2.WriteEpisodeRequest(outcome=record.outcome)


def write_episode(
    stub: episode_store_pb2_grpc.EpisodeStoreStub, record: EpisodeRecord, timeout_s: float = 30.0
) -> episode_store_pb2.WriteEpisodeResponse:
    """Streams one episode; safe to call again with the same record after any failure."""
    return stub.WriteEpisode(episode_requests(record), timeout=timeout_s)


def retry_after_s(err: grpc.RpcError) -> float | None:
    """The wait a refusal asks for when the store is busy (the episode is fine), else None."""
    trailing = getattr(err, "trailing_metadata", lambda: None)()
    for key, value in trailing or ():
        if key == RETRY_AFTER_KEY and value.isdigit():
            return int(value) / 1000.0
    return None


def list_all(
    stub: episode_store_pb2_grpc.EpisodeStoreStub,
    flt: episode_store_pb2.EpisodeFilter | None = None,
    page_size: int = 500,
    timeout_s: float = 30.0,
) -> Iterator[episode_store_pb2.EpisodeSummary]:
    """Every episode matching `flt`, page by page, in ingest order."""
    token = ""
    while True:
        page = stub.ListEpisodes(
            episode_store_pb2.ListEpisodesRequest(
                filter=flt, page_size=page_size, page_token=token
            ),
            timeout=timeout_s,
        )
        yield from page.episodes
        token = page.next_page_token
        if not token:
            return


def connect(
    address: str, max_message_bytes: int = 16 * 1024 * 1024
) -> tuple[grpc.Channel, episode_store_pb2_grpc.EpisodeStoreStub]:
    """A channel and stub for the store at host:port (TLS as `upstream.channel` decides)."""
    channel = upstream.channel(address, max_message_bytes)
    return channel, episode_store_pb2_grpc.EpisodeStoreStub(channel)
