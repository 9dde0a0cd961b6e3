"""Image messages to and from numpy arrays: one place for RAW, PNG and JPEG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PilImage

from graspfleet.v1 import common_pb2
from services.common.errors import InvalidArgument

_PIL_FORMAT = {common_pb2.Image.ENCODING_PNG: "PNG", common_pb2.Image.ENCODING_JPEG: "JPEG"}
_PIL_CHANNELS = {"L": 1, "P": 1, "RGB": 3}


def encode_image(
    pixels: np.ndarray, encoding: int = common_pb2.Image.ENCODING_PNG
) -> common_pb2.Image:
    """Wraps a uint8 HxW (mask) or HxWx3 (RGB) array as an Image message."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if encoding == common_pb2.Image.ENCODING_RAW:
        data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    else:
        buffer = io.BytesIO()
        PilImage.fromarray(pixels).save(
            buffer, format="PNG" if encoding == common_pb2.Image.ENCODING_PNG else "JPEG"
        )
        data = buffer.getvalue()
    return common_pb2.Image(
        encoding=encoding, width=width, height=height, channels=channels, data=data
    )


def decode_image(image: common_pb2.Image, field: str = "image") -> np.ndarray:
    """The pixels of an Image message as uint8 HxWxC (HxW for one channel).

    `check_image` reads only a PNG's or JPEG's header; this decodes the whole
    data, so a truncated or corrupted image is found here.

    Raises:
        InvalidArgument: the data does not decode to the declared size and channels.
    """
    shape = (image.height, image.width) + ((image.channels,) if image.channels > 1 else ())
    if image.encoding == common_pb2.Image.ENCODING_RAW:
        if len(image.data) != int(np.prod(shape)):
            raise InvalidArgument(
                f"{field}: RAW {image.width}x{image.height}x{image.channels} needs "
                f"{int(np.prod(shape))} bytes, got {len(image.data)}"
            )
        return np.frombuffer(image.data, dtype=np.uint8).reshape(shape)
    try:
        pixels = np.asarray(PilImage.open(io.BytesIO(image.data)))
    except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged data
        raise InvalidArgument(
            f"{field}: the image data is damaged and does not decode ({type(err).__name__}: "
            f"{str(err)[:120]}); send the whole, unmodified encoded image"
        ) from None
    if pixels.shape != shape or pixels.dtype != np.uint8:
        raise InvalidArgument(
            f"{field}: decodes to {pixels.dtype} {pixels.shape}, not the declared uint8 {shape}"
        )
    return pixels


def check_image(
    field: str,
    image: common_pb2.Image,
    *,
    channels: int,
    max_side: int,
    size: tuple[int, int] | None = None,
) -> None:
    """Checks encoding, declared size and that the bytes really are such an image.

    Args:
        field: Name used in messages ("steps[3].image").
        image: The image to check.
        channels: 3 for RGB, 1 for a mask.
        max_side: Largest width or height allowed.
        size: (width, height) the image must have, e.g. that of x0.
    """
    if image.encoding not in _PIL_FORMAT and image.encoding != common_pb2.Image.ENCODING_RAW:
        raise InvalidArgument(
            f"{field}.encoding={image.encoding} is not a known value; use ENCODING_RAW, ENCODING_PNG or ENCODING_JPEG"
            if image.encoding
            else f"{field}.encoding is not set; use ENCODING_RAW, ENCODING_PNG or ENCODING_JPEG"
        )
    w, h = image.width, image.height
    if not (1 <= w <= max_side and 1 <= h <= max_side):
        raise InvalidArgument(
            f"{field} is {w}x{h}; width and height must be between 1 and {max_side}"
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
