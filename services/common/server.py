"""The gRPC server every service runs in: health, reflection, metrics, graceful shutdown."""

from __future__ import annotations

import os
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
from services.common.config import TLS_CA_FILE, TLS_FILES, ConfigError, ServerConfig
from services.common.files import write_atomically

log = logs.get_logger(__name__)

# Health service names. Readiness (can the service do its job?) is reported under OVERALL and
# under each of the server's own service names; kubelet readiness probes and local fleet
# start-up ask those. LIVENESS says only that the process serves gRPC at all: SERVING from the
# moment the server listens until it shuts down, so a liveness probe restarts a wedged process
# but never one that is merely not ready (its database away, its model not loaded yet).
OVERALL = ""
LIVENESS = "liveness"


class ServiceServer:
    """A started gRPC server: alive (LIVENESS) once it listens, ready after `set_serving(True)`.

    Readiness can also follow a periodic check instead: see `watch_readiness`.

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
        self._health_lock = threading.Lock()
        self._not_ready_reason: str | None = None
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
        self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        address = f"{config.host}:{config.port}"
        if config.tls_dir:
            credentials = tls_credentials(config.tls_dir, config.tls_client_auth)
            self.port = self.grpc_server.add_secure_port(address, credentials)
        else:
            self.port = self.grpc_server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"{name}: cannot bind {address}")
        self.grpc_server.start()
        self._health_server, self.health_port = None, None
        if config.health_port != -1:
            try:
                self._health_server, self.health_port = _health_only_server(
                    self.health, name, config
                )
            except OSError:
                self.grpc_server.stop(0)
                raise
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
                "health_port": self.health_port,
                "tls": bool(config.tls_dir),
                "client_certificates": config.tls_client_auth,
                "services": self.service_names,
            },
        )

    @property
    def address(self) -> str:
        """host:port a client on this machine dials."""
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "[::]") else self.config.host
        return f"{host}:{self.port}"

    def set_serving(self, serving: bool) -> None:
        """Reports readiness, SERVING or NOT_SERVING, for the server and each of its services."""
        with self._health_lock:
            # After `stop` the health service says NOT_SERVING for good.
            if serving == self._serving or self._stopped.is_set():
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

    def watch_readiness(self, check: Callable[[], str | None], period_s: float) -> None:
        """Reports readiness from `check`: once now, then every `period_s` seconds until `stop`.

        Checking on a timer rather than per call keeps probes cheap and lets the service say
        it cannot work before a client finds out.

        Args:
            check: Returns None when the service can do its job, else why it cannot (logged
                when it changes). It runs on a thread of its own, and one that takes longer
                than `period_s` counts as failed, so a hung database reads as NOT_SERVING.
            period_s: Seconds between checks.
        """
        pending: futures.Future | None = None

        def once() -> None:
            nonlocal pending
            if pending is None or pending.done():
                pending = _in_thread(check, f"{self.name}-readiness")
            try:
                reason = pending.result(timeout=period_s)
            except futures.TimeoutError:
                reason = f"the readiness check took longer than {period_s:g} s"
            except Exception as err:  # noqa: BLE001 - a failing check means not ready
                reason = f"the readiness check failed: {type(err).__name__}: {err}"
            self._report_readiness(reason)

        def watch() -> None:
            while not self._stopped.wait(period_s):
                once()

        once()
        threading.Thread(target=watch, name=f"{self.name}-health", daemon=True).start()

    def _report_readiness(self, reason: str | None) -> None:
        if reason != self._not_ready_reason:
            if reason is None:
                log.info("ready again")
            else:
                log.warning("not ready", extra={"reason": reason})
            self._not_ready_reason = reason
        self.set_serving(reason is None)

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, drain delay, finish in-flight RPCs, release resources."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace_s = self.config.grace_s if grace_s is None else grace_s
        log.info("shutting down", extra={"grace_s": grace_s})
        with self._health_lock:  # after a readiness check that may be reporting right now
            self.health.enter_graceful_shutdown()
            metrics.SERVICE_READY.labels(self.name).set(0)
        if self.config.drain_delay_s:
            time.sleep(self.config.drain_delay_s)
        self.grpc_server.stop(grace_s).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()
        if self._on_stop is not None:
            self._on_stop()
        log.info("stopped")

    def wait(
        self, done: Callable[[], bool] = lambda: False, stop: threading.Event | None = None
    ) -> None:
        """Blocks until `stop` is set or `done()` is true, then stops gracefully.

        By default `stop` is set by SIGTERM or SIGINT.

        A service's entry point passes the event of `stop_signals()` it installed before it
        started listening: a SIGTERM sent as soon as the port file appears must stop it cleanly.
        """
        stop = stop_signals() if stop is None else stop
        while not stop.wait(0.5) and not self._stopped.is_set() and not done():
            pass
        self.stop()


def stop_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set from now on, instead of killing the process.

    Call it first in a service's entry point, before the server listens and writes its port
    file: a supervisor (kubelet, `make run`, a test) may send SIGTERM the moment the port is
    known, and the default action would end the process with -15 before any drain.
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop


def _in_thread(function: Callable[[], str | None], name: str) -> futures.Future:
    """Runs `function` on a new daemon thread (a hung check must not block the process's exit)."""
    future: futures.Future = futures.Future()

    def run() -> None:
        try:
            future.set_result(function())
        except BaseException as err:  # noqa: BLE001 - handed to the waiting caller
            future.set_exception(err)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class _Certificate:
    """A server's certificate and key in its tls_dir, re-read for new connections once changed.

    Kubernetes updates a mounted Secret in place when the certificate is renewed
    (cert-manager, or `kubectl apply` of a new one); re-reading it keeps a long-running
    server from presenting an expired certificate until its next restart.
    """

    def __init__(self, folder: Path, client_auth: bool = False) -> None:
        self.files = tuple(folder / name for name in TLS_FILES)
        if client_auth:
            self.files += (folder / TLS_CA_FILE,)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.initial = self._read()

    def _stat(self) -> tuple:
        # os.stat follows the Secret volume's symlinks to the files of its current version.
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in map(os.stat, self.files))

    def _read(self) -> grpc.ServerCertificateConfiguration:
        certificate, key, *ca = (path.read_bytes() for path in self.files)
        return grpc.ssl_server_certificate_configuration(
            [(key, certificate)], root_certificates=ca[0] if ca else None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each TLS handshake: a new configuration, or None for no change."""
        with self._lock:
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return None
                configuration = self._read()
            except OSError as err:
                log.warning(
                    "TLS certificate unreadable; serving the previous one",
                    extra={"error": str(err)},
                )
                return None
            self._stamp = stamp
        log.info("TLS certificate re-read", extra={"files": [str(f) for f in self.files]})
        return configuration


def tls_credentials(tls_dir: str, client_auth: bool = False) -> grpc.ServerCredentials:
    """Server TLS from `<tls_dir>/tls.crt` and `tls.key`, re-read when they change.

    Args:
        tls_dir: The mounted kubernetes.io/tls Secret.
        client_auth: Require a client certificate signed by `<tls_dir>/ca.crt` (re-read
            with the others): the handshake fails for a caller without one.

    Raises:
        ConfigError: A file is missing or unreadable.
    """
    try:
        certificate = _Certificate(Path(tls_dir), client_auth)
    except OSError as err:
        files = ", ".join((*TLS_FILES, *((TLS_CA_FILE,) if client_auth else ())))
        raise ConfigError(
            f"tls_dir={tls_dir!r}: {err.strerror}: {err.filename}; mount a kubernetes.io/tls "
            f"Secret there ({files}), or leave tls_dir empty for plaintext"
        ) from None
    return grpc.dynamic_ssl_server_credentials(
        certificate.initial, certificate.fetch, require_client_authentication=client_auth
    )


def _health_only_server(
    servicer: health.HealthServicer, name: str, config: ServerConfig
) -> tuple[grpc.Server, int]:
    """A plaintext server with the health service alone, on `health_port`.

    Kubelet's grpc probes cannot speak TLS; this port lets a TLS server keep them.
    It reports the same status as the main port (one servicer serves both).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{name}-health"),
        options=[("grpc.so_reuseport", 0)],
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{config.host}:{config.health_port}")
    if port == 0:
        raise OSError(f"{name}: cannot bind health_port {config.host}:{config.health_port}")
    server.start()
    return server, port
