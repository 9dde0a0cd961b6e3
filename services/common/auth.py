"""Who is calling: bearer tokens of the calls that change state, and workload identities.

A workload identity is the Common Name of the client certificate a caller
presents to a server that requires one (tls_client_auth): gRPC has verified it
against the fleet's CA before the call reaches a handler. Identities name the
workload: `robot-agent/<arm id>` for an arm's agent, `sim-farm` for the farm and
its shards, `trainer` for the trainer and its Jobs, the other services by their
names, `user/<name>` for people.
"""

from __future__ import annotations

import argparse
import fnmatch
import hmac
import os
from collections.abc import Collection

import grpc

from services.common import logs
from services.common.errors import PermissionDenied, Unauthenticated

log = logs.get_logger(__name__)

AUTHORIZATION = "authorization"
# Optional metadata naming the person behind a call; recorded, not authenticated.
USER_HEADER = "x-graspfleet-user"
# Where the command-line clients take the token they send from (their --token default).
TOKEN_ENV = "GRASPFLEET_TOKEN"
ROBOT_AGENT = "robot-agent"
SIM_FARM = "sim-farm"
# The robot ids of the sim-farm's shards (`sim-farm-<shard>`): the arms it simulates.
SIM_FARM_SHARD_PREFIX = f"{SIM_FARM}-"


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The caller's workload identity, or None when it presented no verified certificate.

    None on a plaintext server, or with TLS without client authentication.
    """
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None


def robot_identity(robot_id: str) -> str:
    """The identity of the agent that drives arm `robot_id`."""
    return f"{ROBOT_AGENT}/{robot_id}"


# Who may make each kind of call, as identity patterns (fnmatch: "user/*" is every person).
PEOPLE = ("user/*",)
ARMS = (f"{ROBOT_AGENT}/*",)


def authorize(context: grpc.ServicerContext, allowed: Collection[str], action: str) -> str | None:
    """The caller's identity if it may `action`; None when the server checks no identities.

    Args:
        context: The call's context, which carries the peer's certificate.
        allowed: Identity patterns allowed to (fnmatch, "user/*" for every person).
        action: What the call does, completing "identity X may not ...".

    Raises:
        PermissionDenied: The caller proved an identity that is not allowed.
    """
    identity = peer_identity(context)
    if identity is None:
        return None
    if not any(fnmatch.fnmatchcase(identity, pattern) for pattern in allowed):
        raise PermissionDenied(
            f"identity {identity!r} may not {action}; allowed: {', '.join(sorted(allowed))}"
        )
    return identity


def bearer(token: str) -> list[tuple[str, str]]:
    """The call metadata that presents `token`; none for an empty token."""
    return [(AUTHORIZATION, f"Bearer {token}")] if token else []


def add_token_flag(parser: argparse.ArgumentParser) -> None:
    """Adds `--token`, the bearer token a command that changes state sends (default: env)."""
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV, ""),
        help=f"bearer token (default: env {TOKEN_ENV})",
    )


class BearerAuth:
    """Checks the bearer token of a service's mutating calls; reads stay open.

    Constructed at a server's start: an empty token disables authentication and
    says so in the log as a warning.

    Args:
        token: What callers must send as `authorization: Bearer <token>`; empty
            lets every call through.
        service: The service's name, for the messages callers get ("episode store").
        guarded: What the guarded calls do, completing "anyone who can reach this
            port can ..." in the warning.
    """

    def __init__(self, token: str, service: str, guarded: str) -> None:
        self._token = token.encode()
        self.service = service
        if not token:
            log.warning(
                f"AUTHENTICATION DISABLED: auth_token is empty, so anyone who can reach this "
                f"port can {guarded}; set --auth-token or GRASPFLEET_AUTH_TOKEN"
            )

    def check(
        self, context: grpc.ServicerContext, allowed: Collection[str] = PEOPLE, action: str = ""
    ) -> str:
        """Lets a mutating call through or refuses it; returns who to record as its author.

        Args:
            context: The call's context: the peer's certificate and its metadata.
            allowed: The identities that may make the call (`authorize`), checked when
                the server requires client certificates.
            action: What the call does, for the refusal's message.

        Returns:
            The caller's proven identity; without one, its `x-graspfleet-user`
            metadata (what the client says), else "token" when it authenticated and
            "anonymous" when authentication is disabled.

        Raises:
            Unauthenticated: The call carries no `authorization: Bearer <token>`.
            PermissionDenied: The token is not this service's, or the identity may not.
        """
        identity = authorize(context, allowed, action or f"change the {self.service}'s state")
        metadata = dict(context.invocation_metadata())
        user = identity or metadata.get(USER_HEADER, "")
        if not self._token:
            return user or "anonymous"
        value = metadata.get(AUTHORIZATION, "")
        if not value:
            raise Unauthenticated("this call changes state: send 'authorization: Bearer <token>'")
        scheme, _, given = value.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthenticated("authorization metadata must read 'Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise PermissionDenied(f"the bearer token is not accepted by this {self.service}")
        return user or "token"
