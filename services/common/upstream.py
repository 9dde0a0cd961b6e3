"""Calling another graspfleet service: channels with our limits, and its failures as our errors."""

from __future__ import annotations

import grpc

from services.common import errors

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


def channel(address: str, max_message_bytes: int = 16 * 1024 * 1024) -> grpc.Channel:
    """An insecure channel to host:port that sends and accepts messages up to the limit."""
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ],
    )


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
