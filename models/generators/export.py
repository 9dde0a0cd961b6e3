"""Publishing a refiner generator (GraspGAN or RCAN) as a versioned SavedModel: the serving contract.

Layout, as for the grasp model: `<model_base>/<name>/<integer version>/`, with
`labels.json` beside the versions, served through
`models.repository.ModelRepository`. Default names:
`graspgan` and `rcan`. A version is written in full under a `.tmp-<uuid>`
folder (not an integer, so no reader looks at it), fsynced, and renamed into
place in one step.

Signature `serving_default` (SIGNATURE_KEY):
  input  `images` (INPUT_IMAGES): uint8 [N, H, W, 3], any H, W >= MIN_SIDE.
  output `images` (OUTPUT_IMAGES): uint8 [N, H, W, 3], refined (GraspGAN) or canonical (RCAN).
  output `masks` (OUTPUT_MASKS): uint8 [N, H, W], argmax class ids: robots.world's
      MASK_BACKGROUND=0, MASK_TRAY=1, MASK_ARM=2, MASK_OBJECT=3.
The generator is fully convolutional and resizes each upsampling to its skip's
size, so the output has exactly the input's size with no padding or cropping.

Beside the SavedModel, `graspfleet_model.json`: {"format_version": 1, "kind":
"graspgan" | "rcan", "name", "image_size": [H, W] (the training size),
"created_at", "generator": {GeneratorConfig fields}, "signature": {...},
"training": {losses, metrics, ...}} plus whatever else the caller adds.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict
from pathlib import Path

import tensorflow as tf

from models.generators.networks import UNetGenerator
from models.registry import FORMAT_VERSION, METADATA_FILE, publish_staged

SIGNATURE_KEY = "serving_default"
INPUT_IMAGES = "images"
OUTPUT_IMAGES = "images"
OUTPUT_MASKS = "masks"
KIND_GRASPGAN = "graspgan"
KIND_RCAN = "rcan"
KINDS = (KIND_GRASPGAN, KIND_RCAN)
DEFAULT_NAMES = {KIND_GRASPGAN: "graspgan", KIND_RCAN: "rcan"}
MIN_SIDE = 16


def to_uint8(images: tf.Tensor) -> tf.Tensor:
    """Float images in [-1, 1] to uint8 pixels (rounded, clipped)."""
    pixels = tf.round((tf.clip_by_value(images, -1.0, 1.0) + 1.0) * 127.5)
    return tf.cast(pixels, tf.uint8)


class RefinerModule(tf.Module):
    """The serving signature around a generator: uint8 images in, uint8 images and masks out."""

    def __init__(self, generator: UNetGenerator) -> None:
        super().__init__()
        self.generator = generator

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, INPUT_IMAGES)])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Refined (or canonical) images and mask class ids of the same size as `images`."""
        check = tf.debugging.assert_greater_equal(
            tf.reduce_min(tf.shape(images)[1:3]),
            MIN_SIDE,
            message=f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels",
        )
        with tf.control_dependencies([check] if check is not None else []):
            x = tf.cast(images, tf.float32) / 127.5 - 1.0
        refined, mask_logits = self.generator(x)
        masks = tf.cast(tf.argmax(mask_logits, axis=-1), tf.uint8)
        return {OUTPUT_IMAGES: to_uint8(refined), OUTPUT_MASKS: masks}


def export_generator(
    generator: UNetGenerator,
    model_base: str | Path,
    name: str,
    kind: str,
    image_size: tuple[int, int],
    metadata: dict | None = None,
) -> Path:
    """Publishes `generator` as the next integer version of `<model_base>/<name>/`.

    Args:
        generator: A built generator (see `networks.build_generator`).
        model_base: The model repository.
        name: Model name (a folder under model_base), e.g. `DEFAULT_NAMES[kind]`.
        kind: KIND_GRASPGAN or KIND_RCAN.
        image_size: (height, width) of the images it was trained at.
        metadata: JSON-serializable facts for `graspfleet_model.json`; "training"
            (losses, metrics) is expected. Must not reuse the keys written here.

    Returns:
        The version folder; its name is the version number.

    Raises:
        ValueError: unknown kind, a bad image size, or metadata reusing a reserved key.
        TypeError: metadata is not JSON-serializable.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    height, width = (int(v) for v in image_size)
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image_size {image_size} is below the {MIN_SIDE}px minimum")
    record = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "name": name,
        "image_size": [height, width],
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "generator": asdict(generator.generator_config),
        "signature": {
            "key": SIGNATURE_KEY,
            "inputs": {INPUT_IMAGES: "uint8 [N, H, W, 3]"},
            "outputs": {OUTPUT_IMAGES: "uint8 [N, H, W, 3]", OUTPUT_MASKS: "uint8 [N, H, W]"},
        },
    }
    metadata = {"training": {}, **(metadata or {})}
    clashes = sorted(set(record) & set(metadata))
    if clashes:
        raise ValueError(f"metadata keys {clashes} are reserved by export_generator")
    text = json.dumps({**record, **metadata}, indent=2, sort_keys=True)

    def write(staging: Path) -> None:
        module = RefinerModule(generator)
        tf.saved_model.save(module, str(staging), signatures={SIGNATURE_KEY: module.serve})
        (staging / METADATA_FILE).write_text(text + "\n")

    model_dir = Path(model_base) / name
    version = publish_staged(model_dir, write)
    return model_dir / str(version)
