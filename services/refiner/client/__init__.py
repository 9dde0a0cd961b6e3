"""Calling the refiner: numpy images in, refined (or canonical) images and masks out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from graspfleet.v1 import common_pb2, refiner_pb2, refiner_pb2_grpc
from services.common import upstream
from services.common.images import decode_image, encode_image

MODES = {"graspgan": refiner_pb2.REFINER_MODE_GRASPGAN, "rcan": refiner_pb2.REFINER_MODE_RCAN}


@dataclass(frozen=True)
class Refined:
    """One Refine answer."""

    images: list[np.ndarray]  # uint8 [H, W, 3] each, the size sent
    masks: list[np.ndarray]  # uint8 [H, W] class ids each; empty unless asked for
    model: common_pb2.ModelRef  # the version that answered


def connect(address: str) -> tuple[grpc.Channel, refiner_pb2_grpc.RefinerStub]:
    """A channel and stub for the refiner at host:port."""
    channel = upstream.channel(address)
    return channel, refiner_pb2_grpc.RefinerStub(channel)


def refine(
    stub: refiner_pb2_grpc.RefinerStub,
    images: Sequence[np.ndarray],
    mode: str,
    *,
    model: common_pb2.ModelRef | None = None,
    return_masks: bool = False,
    timeout_s: float = 30.0,
) -> Refined:
    """Sends one batch of uint8 RGB images of one size; images travel as PNG, answers as RAW.

    Args:
        stub: RefinerStub.
        images: [H, W, 3] uint8 arrays, all of one size.
        mode: "graspgan" or "rcan".
        model: A version or label; the mode's stable (or newest) version when None.
        return_masks: Also return the generator's segmentation masks.
        timeout_s: Deadline of the call.

    Raises:
        grpc.RpcError: the refiner refused the request or did not answer.
        ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}; use one of {sorted(MODES)}")
    request = refiner_pb2.RefineRequest(
        mode=MODES[mode],
        images=[encode_image(np.asarray(image, np.uint8)) for image in images],
        model=model,
        return_masks=return_masks,
        output_encoding=common_pb2.Image.ENCODING_RAW,
    )
    response = stub.Refine(request, timeout=timeout_s)
    return Refined(
        images=[decode_image(image) for image in response.images],
        masks=[decode_image(mask) for mask in response.masks],
        model=response.model,
    )
