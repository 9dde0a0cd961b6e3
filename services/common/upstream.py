"""Calling another graspfleet service: channels with our limits, and its failures as our errors.

Channels speak TLS when the environment variable GRASPFLEET_TLS_CA names a CA
certificate (PEM) to verify servers with; plaintext otherwise. It is one setting
for every client in the process, as servers turn TLS on together (tls_dir).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from services.common import errors, logs
from services.common.config import TLS_FILES, ConfigError

log = logs.get_logger(__name__)

_BY_CODE = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.FailedPrecondition,
        errors.ResourceExhausted,
        errors.Unavailable,
    )
}


TLS_CA_ENV = "GRASPFLEET_TLS_CA"
# A folder holding this workload's own certificate and key (tls.crt, tls.key): presented to
# servers that require client certificates; its Common Name is the workload's identity.
TLS_CLIENT_DIR_ENV = "GRASPFLEET_TLS_CLIENT_DIR"
# How often a call may look whether the client certificate's files changed, seconds.
RENEW_CHECK_S = 1.0
MAX_RECONNECT_BACKOFF_MS = 5000


def channel(
    address: str,
    max_message_bytes: int = 16 * 1024 * 1024,
    *,
    tls_ca: str | None = None,
    tls_client_dir: str | None = None,
) -> grpc.Channel:
    """A channel to host:port that sends and accepts messages up to the limit.

    Args:
        address: host:port; with TLS, the host must be a name (or IP) in the
            server's certificate.
        max_message_bytes: Largest message sent or accepted.
        tls_ca: CA certificate file (PEM) that makes the channel TLS; None reads
            GRASPFLEET_TLS_CA; empty means plaintext. Over TLS the channel presents
            the client certificate in GRASPFLEET_TLS_CLIENT_DIR when that is set (read
            when the channel is made: a renewed certificate reaches new channels).
        tls_client_dir: The folder of the client certificate to present; None reads
            GRASPFLEET_TLS_CLIENT_DIR; empty presents none.

    Raises:
        ConfigError: The CA certificate cannot be read.
    """
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # gRPC's wait between reconnects grows to 120 s by default; an upstream that comes
        # back (a predictor after an outage) must be found within seconds, by calls and by
        # the readiness checks that dial it.
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    ca = os.environ.get(TLS_CA_ENV, "") if tls_ca is None else tls_ca
    if not ca:
        return grpc.insecure_channel(address, options=options)
    client_dir = (
        os.environ.get(TLS_CLIENT_DIR_ENV, "") if tls_client_dir is None else tls_client_dir
    )
    if not client_dir:
        return _secure_channel(address, options, ca, "")
    files = (Path(ca), *(Path(client_dir, name) for name in TLS_FILES))
    return RenewingChannel(lambda: _secure_channel(address, options, ca, client_dir), files)


def _secure_channel(address: str, options: list, ca: str, client_dir: str) -> grpc.Channel:
    """A TLS channel trusting `ca`, presenting the certificate in `client_dir` if given."""
    try:
        root = Path(ca).read_bytes()
    except OSError as err:
        raise ConfigError(f"{TLS_CA_ENV}={ca!r}: cannot read the CA certificate: {err}") from None
    key = certificate = None
    if client_dir:
        try:
            certificate, key = (Path(client_dir, name).read_bytes() for name in TLS_FILES)
        except OSError as err:
            raise ConfigError(
                f"{TLS_CLIENT_DIR_ENV}={client_dir!r}: cannot read the client certificate: {err}"
            ) from None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=certificate
    )
    return grpc.secure_channel(address, credentials, options=options)


def as_service_error(err: grpc.RpcError, upstream: str) -> errors.ServiceError:
    """Re-raises an upstream failure with the same meaning for our caller.

    Deadlines and connection failures become UNAVAILABLE (the caller may retry);
    a refused request keeps its code; anything else is reported as UNAVAILABLE.
    """
    code = err.code()
    cls = _BY_CODE.get(code, errors.Unavailable)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # Our request to it was bad: that is our bug or the caller's input, not a transient failure.
        cls = errors.FailedPrecondition
    return cls(f"{upstream}: {code.name}: {err.details()}")


class RenewingChannel(grpc.Channel):
    """A TLS channel that presents the certificate files as they are now.

    A channel reads its credentials once. cert-manager renews a workload's
    certificate in the mounted Secret weeks before it expires; a client that lives
    longer would present the expired one at its next reconnect. This channel looks
    at the files' identity (inode, mtime, size) at most every RENEW_CHECK_S when a
    call starts and, once they changed, makes a new channel from them: calls from
    then on use it, calls in flight finish on the old one (closed with this one).
    Stubs made before the change need no rebuilding.
    """

    def __init__(self, make: Callable[[], grpc.Channel], files: tuple[Path, ...]) -> None:
        self._make = make
        self._files = files
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._channel = make()
        self._retired: list[grpc.Channel] = []
        self._checked = time.monotonic()

    def _stat(self) -> tuple | None:
        try:
            return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in map(os.stat, self._files))
        except OSError:
            return None  # a Secret mid-update: keep the channel there is

    def current(self) -> grpc.Channel:
        """The channel of the certificate files as they are now."""
        with self._lock:
            if time.monotonic() - self._checked < RENEW_CHECK_S:
                return self._channel
            self._checked = time.monotonic()
            stamp = self._stat()
            if stamp is None or stamp == self._stamp:
                return self._channel
            try:
                channel = self._make()
            except ConfigError as err:
                log.warning("renewed certificate unreadable; keeping the previous one",
                            extra={"error": str(err)})  # fmt: skip
                return self._channel
            self._retired.append(self._channel)
            self._channel, self._stamp = channel, stamp
            log.info("client certificate renewed", extra={"files": [str(f) for f in self._files]})
            return channel

    def _multicallable(self, kind: str, method: str, *args, **kwargs) -> _Renewing:
        return _Renewing(self, kind, method, args, kwargs)

    def unary_unary(self, method, *args, **kwargs):
        """A unary-unary callable bound to the current channel at each call."""
        return self._multicallable("unary_unary", method, *args, **kwargs)

    def unary_stream(self, method, *args, **kwargs):
        """A unary-stream callable bound to the current channel at each call."""
        return self._multicallable("unary_stream", method, *args, **kwargs)

    def stream_unary(self, method, *args, **kwargs):
        """A stream-unary callable bound to the current channel at each call."""
        return self._multicallable("stream_unary", method, *args, **kwargs)

    def stream_stream(self, method, *args, **kwargs):
        """A stream-stream callable bound to the current channel at each call."""
        return self._multicallable("stream_stream", method, *args, **kwargs)

    def subscribe(self, callback, try_to_connect=False):
        """Subscribes `callback` to the current channel's connectivity."""
        self.current().subscribe(callback, try_to_connect)

    def unsubscribe(self, callback):
        """Unsubscribes `callback` from the connectivity of the channel it was subscribed to."""
        self._channel.unsubscribe(callback)

    def close(self):
        """Closes the current channel and every retired one."""
        with self._lock:
            for channel in (*self._retired, self._channel):
                channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Renewing:
    """A stub's method on a RenewingChannel: bound to the channel current at each call."""

    def __init__(self, owner: RenewingChannel, kind: str, method: str, args, kwargs) -> None:
        self._owner, self._kind, self._method = owner, kind, method
        self._args, self._kwargs = args, kwargs
        self._bound: tuple[grpc.Channel | None, object] = (None, None)

    def _target(self):
        channel = self._owner.current()
        if self._bound[0] is not channel:
            made = getattr(channel, self._kind)(self._method, *self._args, **self._kwargs)
            self._bound = (channel, made)
        return self._bound[1]

    def __call__(self, *args, **kwargs):
        return self._target()(*args, **kwargs)

    def __getattr__(self, name: str):
        # future, with_call: whatever the current channel's multicallable offers.
        return getattr(self._target(), name)
