"""The current time as a protobuf Timestamp, the one way services stamp messages."""

from __future__ import annotations

from google.protobuf import timestamp_pb2


def now() -> timestamp_pb2.Timestamp:
    """The current wall-clock time as a protobuf Timestamp."""
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp
