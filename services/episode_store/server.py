"""The episode store's gRPC service: `create_server(config)` and `main()`."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import grpc
from prometheus_client import Counter

from graspfleet.v1 import common_pb2, episode_store_pb2, episode_store_pb2_grpc
from models.episodes import shards
from models.episodes.shards import EpisodeRecord
from services.common import logs
from services.common.auth import PEOPLE, BearerAuth, peer_identity
from services.common.config import load_config
from services.common.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.common.server import ServiceServer, stop_signals
from services.episode_store import client, recovery, validation, writers
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.store import EpisodeStore, open_episode_store

log = logs.get_logger(__name__)

SERVICE_NAME = episode_store_pb2.DESCRIPTOR.services_by_name["EpisodeStore"].full_name

EPISODES_WRITTEN = Counter(
    "graspfleet_store_episodes_written_total",
    "WriteEpisode streams that completed, by domain and whether they were resends.",
    ["domain", "duplicate"],
)
BYTES_WRITTEN = Counter(
    "graspfleet_store_written_bytes_total", "Shard bytes written for new episodes."
)
WRITES_REFUSED = Counter(
    "graspfleet_store_writes_refused_total",
    "WriteEpisode streams refused, by gRPC status code.",
    ["code"],
)
REFUSED_EPISODES = Counter(
    "graspfleet_store_refused_episodes_total",
    "WriteEpisode calls refused for what the client sent (bad data, an id clash, too large), "
    "by gRPC status code; neither refusals for load or time nor duplicate resends count.",
    ["code"],
)
# The codes of a refused episode: sending the same bytes again gets the same answer.
EPISODE_REFUSALS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # over a limit: steps, image size, bytes
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
)
for _code in EPISODE_REFUSALS:
    # Exported as 0 from the start, so that an alert on its increase sees the first refusal.
    REFUSED_EPISODES.labels(_code.name)
# What a busy store asks a client to wait before sending an episode again.
BUSY_RETRY_AFTER_S = 1.0


class _Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class _IdleTimeout(ServiceError):
    # The store ended the stream: not DEADLINE_EXCEEDED or CANCELLED, which would blame the
    # client's deadline or the client; ABORTED says "nothing done, do it again".
    code = grpc.StatusCode.ABORTED


_END = object()


class _IdleLimit:
    """A request stream that ends with ABORTED when no message arrives within `timeout_s`.

    gRPC's request iterator waits with no time limit, and a waiting handler holds one of the
    server's worker threads. Here a helper thread reads one message at a time when asked,
    and the handler waits for it with a timeout. Once the call has ended, gRPC ends the
    iterator, and the helper with it.
    """

    def __init__(self, requests: Iterator, timeout_s: float, total_s: float) -> None:
        self._requests = requests
        self.timeout_s = timeout_s
        self.total_s = total_s
        self._deadline = time.monotonic() + total_s
        self._asked: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._arrived: queue.SimpleQueue[tuple[object, BaseException | None]] = queue.SimpleQueue()
        self._ended = False
        threading.Thread(target=self._read, name="write-episode-reader", daemon=True).start()

    def _read(self) -> None:
        while self._asked.get():
            try:
                self._arrived.put((next(self._requests), None))
            except StopIteration:
                self._arrived.put((_END, None))
                return
            except BaseException as err:  # noqa: BLE001 - handed to the handler's thread
                self._arrived.put((_END, err))
                return

    def __iter__(self) -> _IdleLimit:
        return self

    def __next__(self) -> episode_store_pb2.WriteEpisodeRequest:
        if self._ended:
            raise StopIteration
        self._asked.put(True)
        left = self._deadline - time.monotonic()
        try:
            request, error = self._arrived.get(timeout=max(0.0, min(self.timeout_s, left)))
        except queue.Empty:
            self._ended = True
            if left <= self.timeout_s:
                raise _IdleTimeout(
                    f"the stream was still open after {self.total_s:g} s (write_timeout_s): the "
                    "store ended it and stored nothing; send the whole episode again, faster"
                ) from None
            raise _IdleTimeout(
                f"no message arrived for {self.timeout_s:g} s (write_idle_timeout_s): the "
                "store ended the stream and stored nothing; send the whole episode again"
            ) from None
        if request is _END:
            self._ended = True
            if error is not None:
                raise error
            raise StopIteration
        return request

    def close(self) -> None:
        """Lets the helper thread end as soon as a read it is in returns."""
        self._asked.put(False)


class EpisodeStoreServicer(episode_store_pb2_grpc.EpisodeStoreServicer):
    """Adapts gRPC calls to `EpisodeStore`, validating everything first."""

    def __init__(self, config: EpisodeStoreConfig) -> None:
        self._store: EpisodeStore | None = None
        self.config = config
        self.limits = validation.Limits(
            max_steps=config.max_steps,
            max_image_side=config.max_image_side,
            max_episode_bytes=config.episode_bytes_limit,
        )
        self._write_slots = threading.BoundedSemaphore(config.max_concurrent_writes)
        self.auth = BearerAuth(
            config.auth_token, "episode store", "relabel episodes, changing training labels"
        )
        if not config.tls_client_auth:
            log.warning(
                "WRITER IDENTITIES OFF: without tls_client_auth no caller can be told from "
                "another, so any client that reaches this port can write any arm's episodes "
                "(and steer the rollout); deploy with client certificates"
            )

    def open(self, store: EpisodeStore) -> None:
        """Starts answering calls with `store`."""
        self._store = store

    def close(self) -> None:
        """Closes the store, if one was opened."""
        if self._store is not None:
            self._store.close()

    @property
    def store(self) -> EpisodeStore:
        """The open store.

        Raises:
            Unavailable: the store is still starting.
        """
        if self._store is None:
            raise Unavailable("the episode store is still starting; retry shortly")
        return self._store

    def WriteEpisode(self, request_iterator, context):
        """Receives one episode as a stream (header, steps, outcome) and stores it."""
        # Refused at once, not queued: a waiting stream would hold a worker thread, and health
        # checks and reads need those (max_concurrent_writes is below max_workers).
        if not self._write_slots.acquire(blocking=False):
            WRITES_REFUSED.labels("RESOURCE_EXHAUSTED").inc()
            context.set_trailing_metadata(
                ((client.RETRY_AFTER_KEY, str(round(BUSY_RETRY_AFTER_S * 1000))),)
            )
            raise ResourceExhausted(
                f"the store is receiving {self.config.max_concurrent_writes} episodes already "
                f"and stored nothing; send the episode again in {BUSY_RETRY_AFTER_S:g} s or later"
            )
        requests = _IdleLimit(
            request_iterator, self.config.write_idle_timeout_s, self.config.write_timeout_s
        )
        identity = peer_identity(context)
        try:
            record = self._receive(requests, context, identity)
            response = self.store.ingest(record, writer=identity or "")
        except ServiceError as err:
            WRITES_REFUSED.labels(err.code.name).inc()
            if err.code in EPISODE_REFUSALS:
                REFUSED_EPISODES.labels(err.code.name).inc()
            elif isinstance(err, _IdleTimeout):
                log.warning("idle WriteEpisode stream ended", extra={"peer": context.peer()})
            raise
        finally:
            requests.close()
            self._write_slots.release()
        EPISODES_WRITTEN.labels(
            common_pb2.Domain.Name(record.header.domain), str(response.duplicate).lower()
        ).inc()
        if not response.duplicate:
            BYTES_WRITTEN.inc(response.stored_bytes)
        return response

    def _receive(
        self, requests: Iterator, context: grpc.ServicerContext, identity: str | None
    ) -> EpisodeRecord:
        """Reads header, steps and outcome in order, validating each part as it arrives.

        A header that `identity` may not write ends the stream before its steps.
        """
        header = None
        steps: list[common_pb2.Step] = []
        outcome = None
        received = 0
        try:
            for request in requests:
                received += request.ByteSize()
                if received > self.limits.max_episode_bytes:
                    raise ResourceExhausted(
                        f"episode exceeds {self.limits.max_episode_bytes} bytes, the store's limit"
                    )
                part = request.WhichOneof("part")
                if part is None:
                    raise InvalidArgument(
                        "a WriteEpisodeRequest carries none of header, step, outcome"
                    )
                if outcome is not None:
                    raise InvalidArgument(
                        f"a {part} arrived after the outcome; the outcome must come last"
                    )
                if part == "header":
                    if header is not None:
                        raise InvalidArgument(
                            "a second header arrived; send one episode per stream"
                        )
                    validation.check_header(request.header, self.limits)
                    refused = writers.refusal(identity, request.header)
                    if refused:
                        raise PermissionDenied(refused)
                    header = request.header
                elif header is None:
                    raise InvalidArgument(f"the stream starts with a {part}; send the header first")
                elif part == "step":
                    validation.check_step(request.step, len(steps), header, self.limits)
                    steps.append(request.step)
                else:
                    validation.check_outcome(request.outcome, len(steps))
                    outcome = request.outcome
        except grpc.RpcError:
            raise _Cancelled("the client went away mid-stream; nothing was stored") from None
        if not context.is_active():
            raise _Cancelled("the client went away mid-stream; nothing was stored")
        if header is None:
            raise InvalidArgument("the stream was empty: send a header, steps, then an outcome")
        if outcome is None:
            raise InvalidArgument(
                f"the stream ended after {len(steps)} steps without an outcome; nothing was stored"
            )
        return EpisodeRecord(header=header, steps=tuple(steps), outcome=outcome)

    def GetEpisode(self, request, context):
        """One episode's summary and label history, with its steps when asked."""
        return self.store.get(request.episode_id, request.include_steps)

    def ListEpisodes(self, request, context):
        """A page of episode summaries matching the request's filter."""
        return self.store.list(request)

    def Relabel(self, request, context):
        """Corrects an episode's label, recording the caller's proven identity as its source."""
        self.auth.check(context, (*PEOPLE, "trainer"), "relabel episodes")
        identity = peer_identity(context)
        if identity is not None:
            # The label history names who proved to be relabeling, not who the caller says.
            request = episode_store_pb2.RelabelRequest(
                episode_id=request.episode_id,
                success=request.success,
                reason=request.reason,
                source=identity,
            )
        return self.store.relabel(request)

    def Stats(self, request, context):
        """Counts and success rate of the matching episodes, also by robot, domain and model."""
        return self.store.stats(request)


def open_store(config: EpisodeStoreConfig) -> EpisodeStore:
    """Opens the metadata backend and the shard folder, checks they belong together, sweeps.

    Raises:
        recovery.MetadataMissing: The database holds no episode but the shard folder does.
    """
    store = open_episode_store(config)
    try:
        recovery.check_metadata_present(store)
        shards.warm_up()
        recovery.sweep(store)
    except BaseException:
        store.close()
        raise
    return store


def create_server(config: EpisodeStoreConfig) -> ServiceServer:
    """Starts the store's gRPC server; SERVING while its metadata backend and shards work."""
    servicer = EpisodeStoreServicer(config)
    server = ServiceServer(
        "episode-store",
        config,
        register=lambda grpc_server: episode_store_pb2_grpc.add_EpisodeStoreServicer_to_server(
            servicer, grpc_server
        ),
        service_names=[SERVICE_NAME],
        on_stop=servicer.close,
    )
    try:
        store = open_store(config)
    except Exception:
        server.stop(grace_s=0)
        raise
    servicer.open(store)
    server.watch_readiness(store.check, config.health_check_period_s)
    return server


def main(argv: list[str] | None = None) -> None:
    """`graspfleet store serve`: runs the store until SIGTERM."""
    config = load_config(EpisodeStoreConfig, "graspfleet store serve", argv)
    logs.configure_logging("episode-store", config.log_level, config.log_format)
    stop = stop_signals()  # before the port file: a SIGTERM from then on drains
    try:
        server = create_server(config)
    except recovery.MetadataMissing as err:
        log.error("the store refuses to start", extra={"reason": str(err)})
        raise SystemExit(2) from None
    server.wait(stop=stop)
