"""Frozen config dataclasses filled from flags, then environment, then defaults.

Every service declares one config dataclass built from `setting(...)` fields. A
field `data_dir` is set by the flag `--data-dir` or the environment variable
`GRASPFLEET_DATA_DIR`; flags win over the environment. Validation runs in the
dataclass's `__post_init__` and raises `ConfigError`, which `load_config` turns
into a clean exit that names the setting to fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

ENV_PREFIX = "GRASPFLEET_"
# The certificate and key in a server's tls_dir: the keys of a kubernetes.io/tls Secret.
TLS_FILES = ("tls.crt", "tls.key")
# The CA beside them (cert-manager writes it into the same Secret): it signs the clients'
# certificates when a server requires them (tls_client_auth).
TLS_CA_FILE = "ca.crt"

C = TypeVar("C")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it and says what to do."""


def setting(default: Any, help: str, *, required: bool = False) -> Any:
    """Declares one config field.

    Args:
        default: Value when neither flag nor environment sets it.
        help: What the setting means, with its unit.
        required: When true, an empty value stops the service at start.
    """
    return dataclasses.field(default=default, metadata={"help": help, "required": required})


def check_ranges(spec: object, checks: dict[str, bool]) -> None:
    """Raises for the first field whose check is false: "TrainSpec.steps=0 is out of range".

    Raises:
        ValueError: a check failed.
    """
    for name, ok in checks.items():
        if not ok:
            raise ValueError(
                f"{type(spec).__name__}.{name}={getattr(spec, name)!r} is out of range"
            )


def check_required(config: object) -> None:
    """Raises ConfigError for the first field declared `required` whose value is empty."""
    for field in dataclasses.fields(config):
        if field.metadata.get("required") and not getattr(config, field.name):
            raise ConfigError(
                f"{field.name} is required: set {flag_name(field.name)} or "
                f"{env_name(field.name)} ({field.metadata.get('help', '')})"
            )


def env_name(field_name: str) -> str:
    """The environment variable that sets a config field."""
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    """The command-line flag that sets a config field."""
    return "--" + field_name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Settings every gRPC service has."""

    host: str = setting("127.0.0.1", "Address the gRPC server binds (0.0.0.0 in a pod).")
    port: int = setting(0, "gRPC port; 0 picks a free one (see port_file).")
    port_file: str = setting(
        "",
        "Write the bound gRPC port to this file once listening (and the metrics port to <file>.metrics).",
    )
    metrics_port: int = setting(-1, "Prometheus /metrics port; 0 picks a free one, -1 disables.")
    max_message_bytes: int = setting(
        16 * 1024 * 1024, "Largest gRPC message accepted or sent, bytes."
    )
    max_workers: int = setting(16, "Threads serving RPCs.")
    max_concurrent_rpcs: int = setting(64, "RPCs in flight before new ones get RESOURCE_EXHAUSTED.")
    grace_s: float = setting(10.0, "On SIGTERM, seconds in-flight RPCs get to finish.")
    drain_delay_s: float = setting(
        0.0, "On SIGTERM, seconds NOT_SERVING is reported before the server stops accepting calls."
    )
    max_connection_age_s: float = setting(
        0.0,
        "Close client connections after this many seconds (with a grace of grace_s) so "
        "clients reconnect and spread over new replicas; 0 keeps them open.",
    )
    tls_dir: str = setting(
        "",
        "Folder holding tls.crt and tls.key (a mounted kubernetes.io/tls Secret): the server "
        "then accepts TLS only, and re-reads them when they change; empty serves plaintext.",
    )
    tls_client_auth: bool = setting(
        False,
        "With tls_dir: require every caller to present a client certificate signed by "
        "<tls_dir>/ca.crt, whose Common Name is the caller's workload identity (robot-agent/"
        "<arm>, sim-farm, trainer, ...); the services authorize writes by it.",
    )
    health_port: int = setting(
        -1,
        "Plaintext port serving only the gRPC health service, for kubelet grpc probes (they "
        "cannot speak TLS); 0 picks a free one, -1 disables.",
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR.")
    log_format: str = setting("json", "json (one object a line) or text.")

    def __post_init__(self) -> None:
        check_required(self)
        check_port("port", self.port)
        if self.metrics_port != -1:
            check_port("metrics_port", self.metrics_port)
        if self.health_port != -1:
            check_port("health_port", self.health_port)
        if self.max_message_bytes < 1024:
            raise ConfigError(f"max_message_bytes={self.max_message_bytes} is below 1024 bytes")
        if self.max_workers < 1 or self.max_concurrent_rpcs < 1:
            raise ConfigError("max_workers and max_concurrent_rpcs must be at least 1")
        if self.grace_s < 0 or self.drain_delay_s < 0 or self.max_connection_age_s < 0:
            raise ConfigError(
                "grace_s, drain_delay_s and max_connection_age_s must not be negative"
            )
        if self.tls_client_auth and not self.tls_dir:
            raise ConfigError(
                "tls_client_auth needs tls_dir: client certificates are checked over TLS only"
            )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log_level={self.log_level!r}: use DEBUG, INFO, WARNING or ERROR")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"log_format={self.log_format!r}: use json or text")


def check_port(name: str, port: int) -> None:
    """Raises ConfigError unless `port` is a TCP port number or 0."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}={port} is not a TCP port (0-65535)")


def check_address(name: str, address: str) -> None:
    """Raises ConfigError unless `address` looks like host:port."""
    if not address:
        raise ConfigError(
            f"{name} is required: set {flag_name(name)} or {env_name(name)} to host:port"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{name}={address!r} is not host:port")


K8S_API_MODES = ("auto", "in-cluster", "kubeconfig", "off")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
# A namespace: an RFC 1123 label.
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A service account or Secret name: an RFC 1123 subdomain.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def check_job_settings(
    config: object,
    program: str,
    *,
    api_modes: tuple[str, ...] = K8S_API_MODES,
    required_names: tuple[str, ...] = ("k8s_service_account",),
) -> None:
    """The `k8s_*` settings every service that creates Jobs has (`services.common.kube.job`).

    Checked whichever backend runs, so a typo fails at start-up, not at the first Job.

    Args:
        config: A service config with k8s_api, k8s_namespace, k8s_image, k8s_command,
            k8s_service_account, k8s_cpu, k8s_memory, k8s_tls_secret, k8s_ttl_s and
            k8s_deadline_s.
        program: What the Jobs' command runs, for the message (e.g. "`train job`").
        api_modes: The k8s_api values the service takes.
        required_names: The object names (of k8s_service_account, k8s_tls_secret) that
            must be set; the others may be empty.

    Raises:
        ConfigError: a setting Kubernetes would refuse, naming it.
    """
    c: Any = config
    if c.k8s_api not in api_modes:
        raise ConfigError(f"k8s_api={c.k8s_api!r}: use one of {', '.join(api_modes)}")
    if not _LABEL.match(c.k8s_namespace):
        raise ConfigError(
            f"k8s_namespace={c.k8s_namespace!r} is not a Kubernetes namespace name "
            "(lowercase letters, digits and '-', at most 63)"
        )
    for name in ("k8s_service_account", "k8s_tls_secret"):
        value = getattr(c, name)
        if (value or name in required_names) and not _SUBDOMAIN.match(value):
            raise ConfigError(
                f"{name}={value!r} is not a Kubernetes object name "
                "(lowercase letters, digits, '-' and '.')"
            )
    if not c.k8s_image.strip():
        raise ConfigError("k8s_image must name the image the Jobs' pods run")
    if not c.k8s_command:
        raise ConfigError(f"k8s_command must name the program that runs {program}")
    for name in ("k8s_cpu", "k8s_memory"):
        if not _QUANTITY.match(getattr(c, name)):
            raise ConfigError(
                f"{name}={getattr(c, name)!r} is not a Kubernetes quantity (e.g. 500m, 2Gi)"
            )
    if c.k8s_ttl_s < 0 or c.k8s_deadline_s < 0:
        raise ConfigError(
            f"k8s_ttl_s={c.k8s_ttl_s} and k8s_deadline_s={c.k8s_deadline_s} must not be negative"
        )


def _parse(field: dataclasses.Field, raw: str) -> Any:
    kind = _field_type(field)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{field.name}={raw!r} is not a boolean (true/false)")
    if kind is tuple:
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{field.name}={raw!r} is not a valid {kind.__name__}") from None


def _field_type(field: dataclasses.Field) -> type:
    hint = field.type
    if isinstance(hint, str):
        hint = {"str": str, "int": int, "float": float, "bool": bool}.get(hint, hint)
    if isinstance(hint, str):
        return tuple if hint.startswith("tuple") else str
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple
    if origin in (typing.Union, types.UnionType):
        return str
    return hint


def build_parser(cls: type, prog: str, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the config dataclass `cls`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for field in dataclasses.fields(cls):
        help_text = field.metadata.get("help", "")
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            default=None,
            help=f"{help_text} [env {env_name(field.name)}; default {field.default!r}]",
        )
    return parser


def config_from(
    cls: type[C],
    flags: Mapping[str, str | None] | None = None,
    env: Mapping[str, str] | None = None,
) -> C:
    """Builds a config: each field from `flags`, else `env`, else its default.

    Raises:
        ConfigError: a value does not parse, a required setting is empty, or the
            dataclass's own validation refuses the combination.
    """
    env = os.environ if env is None else env
    flags = flags or {}
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        raw = flags.get(field.name)
        if raw is None:
            raw = env.get(env_name(field.name))
        if raw is not None:
            values[field.name] = _parse(field, raw)
    return cls(**values)  # the config checks its required fields (check_required)


def load_config(cls: type[C], prog: str, argv: Sequence[str] | None = None) -> C:
    """Parses flags and environment into `cls`; exits with a clear message when invalid."""
    parser = build_parser(cls, prog, cls.__doc__ or "")
    args = parser.parse_args(argv)
    try:
        return config_from(cls, vars(args))
    except ConfigError as err:
        print(f"{prog}: configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
