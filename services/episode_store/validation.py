"""Checks that an episode is well formed before anything is stored.

Every check raises `InvalidArgument` (or `ResourceExhausted` for limits) with a
message that names the field, what was sent, and what is expected.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

from PIL import Image as PilImage

from graspfleet.v1 import common_pb2
from services.common.errors import InvalidArgument, ResourceExhausted

EPISODE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PIL_FORMAT = {common_pb2.Image.ENCODING_PNG: "PNG", common_pb2.Image.ENCODING_JPEG: "JPEG"}
_PIL_CHANNELS = {"L": 1, "P": 1, "RGB": 3}


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


def check_image(
    field: str,
    image: common_pb2.Image,
    *,
    channels: int,
    limits: Limits,
    size: tuple[int, int] | None = None,
) -> None:
    """Checks encoding, declared size and that the bytes really are such an image.

    Args:
        field: Name used in messages ("steps[3].image").
        image: The image to check.
        channels: 3 for RGB, 1 for a mask.
        limits: Largest side allowed.
        size: (width, height) the image must have, e.g. that of x0.
    """
    check_enum(f"{field}.encoding", common_pb2.Image.Encoding, image.encoding)
    w, h = image.width, image.height
    if not (1 <= w <= limits.max_image_side and 1 <= h <= limits.max_image_side):
        raise InvalidArgument(
            f"{field} is {w}x{h}; width and height must be between 1 and {limits.max_image_side}"
        )
    if image.channels != channels:
        raise InvalidArgument(f"{field}.channels={image.channels}; expected {channels}")
    if size is not None and (w, h) != size:
        raise InvalidArgument(
            f"{field} is {w}x{h} but the episode's x0 is {size[0]}x{size[1]}; "
            "all images of an episode must have one size"
        )
    if image.encoding == common_pb2.Image.ENCODING_RAW:
        expected = w * h * channels
        if len(image.data) != expected:
            raise InvalidArgument(
                f"{field}: RAW {w}x{h}x{channels} needs {expected} bytes, got {len(image.data)}"
            )
        return
    fmt = _PIL_FORMAT[image.encoding]
    try:
        decoded = PilImage.open(io.BytesIO(image.data))  # reads the header only
    except Exception:  # noqa: BLE001 - PIL raises many types for bad data
        raise InvalidArgument(
            f"{field}: data is not a readable {fmt} image ({len(image.data)} bytes)"
        ) from None
    if decoded.format != fmt:
        raise InvalidArgument(f"{field}: encoding says {fmt} but the data is {decoded.format}")
    if decoded.size != (w, h):
        raise InvalidArgument(
            f"{field}: declared {w}x{h} but the {fmt} data is {decoded.size[0]}x{decoded.size[1]}"
        )
    if _PIL_CHANNELS.get(decoded.mode) != channels:
        raise InvalidArgument(f"{field}: {fmt} mode {decoded.mode}; expected {channels} channel(s)")


def _check_finite(field: str, *values: float) -> None:
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument(f"{field} has a NaN or infinite value")


def check_pose(field: str, pose: common_pb2.Pose) -> None:
    p = pose.position_m
    _check_finite(field, p.x, p.y, p.z, pose.yaw_rad, pose.gripper_closure)
    if not 0.0 <= pose.gripper_closure <= 1.0:
        raise InvalidArgument(f"{field}.gripper_closure={pose.gripper_closure}; expected 0..1")


def check_model(field: str, model: common_pb2.ModelRef) -> None:
    if model.version < 0:
        raise InvalidArgument(f"{field}.version={model.version} is negative")


def check_header(header: common_pb2.EpisodeHeader, limits: Limits) -> None:
    """Checks an episode header; raises InvalidArgument naming the first problem."""
    if not EPISODE_ID.match(header.episode_id):
        raise InvalidArgument(
            f"header.episode_id={header.episode_id!r}: use 1-128 characters of A-Z a-z 0-9 . _ : -"
        )
    if not header.robot_id or len(header.robot_id) > 128:
        raise InvalidArgument("header.robot_id must be 1-128 characters")
    check_enum("header.domain", common_pb2.Domain, header.domain)
    check_enum(
        "header.randomization",
        common_pb2.Randomization,
        header.randomization,
        allow_unspecified=True,
    )
    check_model("header.model", header.model)
    if not header.HasField("x0"):
        raise InvalidArgument(
            "header.x0 is missing: every episode needs the image before the arm enters the view"
        )
    check_image("header.x0", header.x0, channels=3, limits=limits)
    size = (header.x0.width, header.x0.height)
    if header.HasField("x0_mask"):
        check_image("header.x0_mask", header.x0_mask, channels=1, limits=limits, size=size)
    if header.HasField("x0_canonical"):
        check_image(
            "header.x0_canonical", header.x0_canonical, channels=3, limits=limits, size=size
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
    check_image(f"{field}.image", step.image, channels=3, limits=limits, size=size)
    if step.HasField("mask"):
        check_image(f"{field}.mask", step.mask, channels=1, limits=limits, size=size)
    if step.HasField("canonical"):
        check_image(f"{field}.canonical", step.canonical, channels=3, limits=limits, size=size)
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
