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
from services.common.config import TLS_FILES, ConfigError

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
    try:
        root = Path(ca).read_bytes()
    except OSError as err:
        raise ConfigError(f"{TLS_CA_ENV}={ca!r}: cannot read the CA certificate: {err}") from None
    key = certificate = None
    client_dir = (
        os.environ.get(TLS_CLIENT_DIR_ENV, "") if tls_client_dir is None else tls_client_dir
    )
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
