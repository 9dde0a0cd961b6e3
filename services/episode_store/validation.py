"""Checks that an episode is well formed before anything is stored.

Every check raises `InvalidArgument` (or `ResourceExhausted` for limits) with a
message that names the field, what was sent, and what is expected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from graspfleet.v1 import common_pb2
from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.images import check_image
from services.common.names import check_name

EPISODE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
# Outside it protobuf refuses to convert the value, so the store refuses it on arrival.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799


@dataclass(frozen=True)
class Limits:
    """What the store accepts."""

    max_steps: int
    max_image_side: int
    max_episode_bytes: int


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def check_enum(field: str, enum, value: int, *, allow_unspecified: bool = False) -> None:
    """Refuses values outside `enum` (proto3 passes unknown numbers through)."""
    known = [name for name, number in enum.items() if number != 0 or allow_unspecified]
    if value not in enum.values():
        raise InvalidArgument(
            f"{field}={value} is not a known value; use one of {', '.join(known)}"
        )
    if value == 0 and not allow_unspecified:
        raise InvalidArgument(f"{field} is not set; use one of {', '.join(known)}")


def _check_finite(field: str, *values: float) -> None:
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument(f"{field} has a NaN or infinite value")


def check_pose(field: str, pose: common_pb2.Pose) -> None:
    """Refuses a pose with a value that is not finite or a gripper closure outside 0..1."""
    p = pose.position_m
    _check_finite(field, p.x, p.y, p.z, pose.yaw_rad, pose.gripper_closure)
    if not 0.0 <= pose.gripper_closure <= 1.0:
        raise InvalidArgument(f"{field}.gripper_closure={pose.gripper_closure}; expected 0..1")


def check_timestamp(field: str, timestamp: timestamp_pb2.Timestamp) -> None:
    """Refuses a Timestamp outside protobuf's range (years 1 to 9999, nanos 0 to 999,999,999)."""
    if not MIN_TIMESTAMP_SECONDS <= timestamp.seconds <= MAX_TIMESTAMP_SECONDS:
        raise InvalidArgument(
            f"{field}.seconds={timestamp.seconds} is outside the Timestamp range "
            f"({MIN_TIMESTAMP_SECONDS} to {MAX_TIMESTAMP_SECONDS}, years 1 to 9999); "
            "send seconds since the Unix epoch"
        )
    if not 0 <= timestamp.nanos <= 999_999_999:
        raise InvalidArgument(
            f"{field}.nanos={timestamp.nanos}; expected 0 to 999999999 "
            "(a negative time carries negative seconds and positive nanos)"
        )


def check_model(field: str, model: common_pb2.ModelRef) -> None:
    """Refuses a model reference with a negative version."""
    if model.version < 0:
        raise InvalidArgument(f"{field}.version={model.version} is negative")


def check_header(header: common_pb2.EpisodeHeader, limits: Limits) -> None:
    """Checks an episode header; raises InvalidArgument naming the first problem."""
    if not EPISODE_ID.match(header.episode_id):
        raise InvalidArgument(
            f"header.episode_id={header.episode_id!r}: use 1-128 characters of A-Z a-z 0-9 . _ : -"
        )
    check_name("header.robot_id", header.robot_id, max_length=128)
    check_enum("header.domain", common_pb2.Domain, header.domain)
    check_enum(
        "header.randomization",
        common_pb2.Randomization,
        header.randomization,
        allow_unspecified=True,
    )
    check_model("header.model", header.model)
    if header.HasField("started_at"):
        check_timestamp("header.started_at", header.started_at)
    if not header.HasField("x0"):
        raise InvalidArgument(
            "header.x0 is missing: every episode needs the image before the arm enters the view"
        )
    check_image("header.x0", header.x0, channels=3, max_side=limits.max_image_side)
    size = (header.x0.width, header.x0.height)
    if header.HasField("x0_mask"):
        check_image(
            "header.x0_mask", header.x0_mask, channels=1, max_side=limits.max_image_side, size=size
        )
    if header.HasField("x0_canonical"):
        check_image(
            "header.x0_canonical",
            header.x0_canonical,
            channels=3,
            max_side=limits.max_image_side,
            size=size,
        )


def check_step(
    step: common_pb2.Step, expected_index: int, header: common_pb2.EpisodeHeader, limits: Limits
) -> None:
    """Checks one step against the episode's header and the steps before it."""
    field = f"steps[{expected_index}]"
    if expected_index >= limits.max_steps:
        raise ResourceExhausted(
            f"episode has more than {limits.max_steps} steps, the store's limit"
        )
    if step.index != expected_index:
        raise InvalidArgument(
            f"{field}.index={step.index}; steps must be sent in order starting at 0 (expected {expected_index})"
        )
    size = (header.x0.width, header.x0.height)
    if not step.HasField("image"):
        raise InvalidArgument(f"{field}.image is missing")
    check_image(f"{field}.image", step.image, channels=3, max_side=limits.max_image_side, size=size)
    if step.HasField("mask"):
        check_image(
            f"{field}.mask", step.mask, channels=1, max_side=limits.max_image_side, size=size
        )
    if step.HasField("canonical"):
        check_image(
            f"{field}.canonical",
            step.canonical,
            channels=3,
            max_side=limits.max_image_side,
            size=size,
        )
    check_pose(f"{field}.pose", step.pose)
    check_enum(f"{field}.command.kind", common_pb2.Command.Kind, step.command.kind)
    m = step.command.motion
    _check_finite(f"{field}.command.motion", m.dx_cm, m.dy_cm, m.dz_cm, m.sin_dyaw, m.cos_dyaw)
    if (
        step.command.kind == common_pb2.Command.KIND_MOVE
        and abs(m.sin_dyaw**2 + m.cos_dyaw**2 - 1.0) > 0.01
    ):
        raise InvalidArgument(
            f"{field}.command.motion: sin_dyaw^2 + cos_dyaw^2 = {m.sin_dyaw**2 + m.cos_dyaw**2:.3f}; "
            "it must be 1 (send the sine and cosine of the rotation)"
        )
    if step.HasField("predicted_success") and not 0.0 <= step.predicted_success <= 1.0:
        raise InvalidArgument(f"{field}.predicted_success={step.predicted_success}; expected 0..1")
    check_model(f"{field}.model", step.model)
    if step.HasField("time"):
        check_timestamp(f"{field}.time", step.time)


def check_outcome(outcome: common_pb2.EpisodeOutcome, num_steps: int) -> None:
    """Checks the outcome against the steps received."""
    check_enum("outcome.result", common_pb2.GraspResult, outcome.result)
    if outcome.num_steps != num_steps:
        raise InvalidArgument(
            f"outcome.num_steps={outcome.num_steps} but {num_steps} steps arrived; "
            "the episode is incomplete and was not stored"
        )
    if num_steps == 0:
        raise InvalidArgument("the episode has no steps; send at least one step before the outcome")
    check_pose("outcome.final_pose", outcome.final_pose)
    if outcome.HasField("ended_at"):
        check_timestamp("outcome.ended_at", outcome.ended_at)
