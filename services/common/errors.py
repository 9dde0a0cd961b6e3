"""Typed service errors: raise one and the runtime answers with its gRPC status."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error a caller can act on; `code` is the gRPC status it is sent with."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """The request itself is wrong: a field is missing, malformed or out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """What the request names does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """What the request would create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The request is valid, but the system is not in the state it needs."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """The service is out of what the call needs: capacity, room, or a size limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """Something the call needs cannot answer now; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(ServiceError):
    """The caller presented no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(ServiceError):
    """The work did not finish before its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
