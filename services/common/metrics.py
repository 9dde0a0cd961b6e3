"""Per-RPC Prometheus metrics (go-grpc-prometheus names) and the /metrics endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

from services.common import errors, logs

log = logs.get_logger(__name__)

# Buckets from 0.5 ms to 60 s: control-loop RPCs are milliseconds, ingest and training seconds.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

RPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from receiving an RPC to sending its status, seconds.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=LATENCY_BUCKETS_S,
)
SERVICE_READY = Gauge(
    "graspfleet_service_ready",
    "1 while the service reports SERVING on its health service, else 0.",
    ["service"],
)


def start_metrics_server(port: int, host: str) -> int | None:
    """Serves /metrics for this process on `port` (0: a free port); returns the port, or None if disabled."""
    if port < 0:
        return None
    server, _thread = prometheus_client.start_http_server(port, addr=host)
    return server.server_port


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


class _Call:
    """Times one RPC and records its outcome exactly once."""

    def __init__(self, service: str, method: str, rpc_type: str) -> None:
        self.labels = (service, method, rpc_type)
        self.start = time.perf_counter()
        RPC_STARTED.labels(*self.labels).inc()

    def done(self, code: grpc.StatusCode) -> None:
        RPC_SECONDS.labels(*self.labels).observe(time.perf_counter() - self.start)
        RPC_HANDLED.labels(*self.labels, code.name).inc()


def _status_of(context: grpc.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)


def _fail(call: _Call, context: grpc.ServicerContext, exc: Exception) -> None:
    """Answers with the status an exception stands for, records it, and re-raises."""
    if isinstance(exc, errors.ServiceError):
        call.done(exc.code)
        context.abort(exc.code, exc.message)
    code = _status_of(context)
    if code is not grpc.StatusCode.OK:  # the handler already called context.abort
        call.done(code)
        raise exc
    if isinstance(exc, grpc.RpcError) and not context.is_active():
        # The client hung up (cancelled, or its deadline passed) while the handler read
        # its request stream: no error of ours, and nobody left to answer.
        call.done(grpc.StatusCode.CANCELLED)
        raise exc
    log.exception("unhandled error in %s/%s", call.labels[0], call.labels[1])
    call.done(grpc.StatusCode.INTERNAL)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


class ServerInterceptor(grpc.ServerInterceptor):
    """Counts and times every RPC, and maps `ServiceError`s to their gRPC status."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler wrapped to count, time and map the errors of every call."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        _, service, method = handler_call_details.method.split("/", 2)
        rpc_type = _rpc_type(handler)
        if handler.response_streaming:
            behavior = handler.unary_stream or handler.stream_stream
            wrapped = _wrap_streaming(behavior, service, method, rpc_type)
        else:
            behavior = handler.unary_unary or handler.stream_unary
            wrapped = _wrap_unary(behavior, service, method, rpc_type)
        factory = {
            "unary": grpc.unary_unary_rpc_method_handler,
            "client_stream": grpc.stream_unary_rpc_method_handler,
            "server_stream": grpc.unary_stream_rpc_method_handler,
            "bidi_stream": grpc.stream_stream_rpc_method_handler,
        }[rpc_type]
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _wrap_unary(behavior: Callable, service: str, method: str, rpc_type: str) -> Callable:
    def wrapped(request, context):
        call = _Call(service, method, rpc_type)
        try:
            response = behavior(request, context)
        except Exception as exc:  # noqa: BLE001 - every failure must get a status
            _fail(call, context, exc)
            raise
        call.done(_status_of(context))
        return response

    return wrapped


def _wrap_streaming(behavior: Callable, service: str, method: str, rpc_type: str) -> Callable:
    def wrapped(request, context) -> Iterator:
        call = _Call(service, method, rpc_type)
        try:
            yield from behavior(request, context)
        except GeneratorExit:
            # gRPC closes the response stream when its client has gone (cancelled,
            # deadline passed, channel closed) before the handler finished.
            call.done(grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must get a status
            _fail(call, context, exc)
            raise
        call.done(_status_of(context))

    return wrapped
