"""One structured logger for every service: JSON lines (or text) on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_SERVICE = {"name": "graspfleet"}
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, service, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line, its extra fields included."""
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": _SERVICE["name"],
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines for local runs: fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one text line, its extra fields appended as key=value."""
        fields = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _RESERVED)
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname[0]} {_SERVICE['name']}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Sends every logger's records to stderr in the chosen format, tagged with `service`."""
    _SERVICE["name"] = service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def get_logger(name: str) -> logging.Logger:
    """The logger for a module. Pass structured fields as `extra={...}`."""
    return logging.getLogger(name)
