"""Calling another graspfleet service: channels with our limits, and its failures as our errors.

Channels speak TLS when the environment variable GRASPFLEET_TLS_CA names a CA
certificate (PEM) to verify servers with; plaintext otherwise. It is one setting
for every client in the process, as servers turn TLS on together (tls_dir).
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from services.common import errors
from services.common.config import ConfigError

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
MAX_RECONNECT_BACKOFF_MS = 5000


def channel(
    address: str, max_message_bytes: int = 16 * 1024 * 1024, *, tls_ca: str | None = None
) -> grpc.Channel:
    """A channel to host:port that sends and accepts messages up to the limit.

    Args:
        address: host:port; with TLS, the host must be a name (or IP) in the
            server's certificate.
        max_message_bytes: Largest message sent or accepted.
        tls_ca: CA certificate file (PEM) that makes the channel TLS; None reads
            GRASPFLEET_TLS_CA; empty means plaintext.

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
    try:
        root = Path(ca).read_bytes()
    except OSError as err:
        raise ConfigError(f"{TLS_CA_ENV}={ca!r}: cannot read the CA certificate: {err}") from None
    credentials = grpc.ssl_channel_credentials(root_certificates=root)
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
