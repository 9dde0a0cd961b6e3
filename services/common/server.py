"""The gRPC server every service runs in: health, reflection, metrics, graceful shutdown."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import logs, metrics
from services.common.config import ServerConfig
from services.common.files import write_atomically

log = logs.get_logger(__name__)

OVERALL = ""  # the health service's name for the server as a whole


class ServiceServer:
    """A started gRPC server that reports NOT_SERVING until `set_serving(True)`.

    Args:
        name: Short service name used in logs and metrics ("episode-store").
        config: Server settings.
        register: Adds the service's servicers to the grpc.Server.
        service_names: Full proto service names, for health and reflection.
        on_stop: Called after the server has drained, to release resources.
    """

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        register: Callable[[grpc.Server], None],
        service_names: Iterable[str],
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.service_names = tuple(service_names)
        self._on_stop = on_stop
        self._stopped = threading.Event()
        self._serving: bool | None = None
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # gRPC shares a port with another live server by default; refuse instead.
            ("grpc.so_reuseport", 0),
        ]
        if config.max_connection_age_s > 0:
            # Long-lived channels pin a client to one replica; a bounded age makes clients
            # reconnect, so a scaled-out Deployment (HPA) actually receives load.
            options += [
                ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(config.grace_s * 1000)),
            ]
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix=name),
            interceptors=[metrics.ServerInterceptor()],
            options=options,
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        register(self.grpc_server)
        reflection.enable_server_reflection(
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        self.set_serving(False)
        self.port = self.grpc_server.add_insecure_port(f"{config.host}:{config.port}")
        if self.port == 0:
            raise OSError(f"{name}: cannot bind {config.host}:{config.port}")
        self.grpc_server.start()
        if config.port_file:
            # Listening now; the health service says when it is ready.
            write_atomically(Path(config.port_file), f"{self.port}\n")
        self.metrics_port = metrics.start_metrics_server(config.metrics_port, config.host)
        if config.port_file and self.metrics_port is not None:
            write_atomically(Path(config.port_file + ".metrics"), f"{self.metrics_port}\n")
        log.info(
            "server started",
            extra={
                "port": self.port,
                "metrics_port": self.metrics_port,
                "services": self.service_names,
            },
        )

    @property
    def address(self) -> str:
        """host:port a client on this machine dials."""
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "[::]") else self.config.host
        return f"{host}:{self.port}"

    def set_serving(self, serving: bool) -> None:
        """Reports SERVING or NOT_SERVING for the server and each of its services."""
        if serving == self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in (OVERALL, *self.service_names):
            self.health.set(service, status)
        metrics.SERVICE_READY.labels(self.name).set(1 if serving else 0)
        log.info("health", extra={"serving": serving})

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, drain delay, finish in-flight RPCs, release resources."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace_s = self.config.grace_s if grace_s is None else grace_s
        log.info("shutting down", extra={"grace_s": grace_s})
        self.health.enter_graceful_shutdown()
        metrics.SERVICE_READY.labels(self.name).set(0)
        if self.config.drain_delay_s:
            time.sleep(self.config.drain_delay_s)
        self.grpc_server.stop(grace_s).wait()
        if self._on_stop is not None:
            self._on_stop()
        log.info("stopped")

    def wait(self, done: Callable[[], bool] = lambda: False) -> None:
        """Blocks until SIGTERM, SIGINT or `done()` is true, then stops gracefully."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        while not stop.wait(0.5) and not self._stopped.is_set() and not done():
            pass
        self.stop()
