"""Talking to the trainer from the outside: its address, what a run's state means, who submits.

The fleet, the CLI and the tests reach the trainer through this module (and the
wire types of protos/graspfleet/v1/trainer.proto), never through its internals.
"""

from __future__ import annotations

import grpc

from graspfleet.v1 import trainer_pb2, trainer_pb2_grpc
from services.common import upstream

# A run's states: working on it (a queued run is neither), and ended for good.
ACTIVE = (trainer_pb2.RUN_STATE_RUNNING, trainer_pb2.RUN_STATE_VALIDATING)
TERMINAL = (
    trainer_pb2.RUN_STATE_SUCCEEDED,
    trainer_pb2.RUN_STATE_FAILED,
    trainer_pb2.RUN_STATE_CANCELLED,
    trainer_pb2.RUN_STATE_REJECTED,
)
# The identities the trainer itself acts as: submitting automatic runs, moving labels.
AUTO_USER = "auto-retrain"
ROLLOUT_USER = "rollout"


def connect(address: str) -> tuple[grpc.Channel, trainer_pb2_grpc.TrainerStub]:
    """A channel and stub for the trainer at host:port (TLS as `upstream.channel` decides)."""
    channel = upstream.channel(address)
    return channel, trainer_pb2_grpc.TrainerStub(channel)
