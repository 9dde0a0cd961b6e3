"""A published generator as an image function: load a version, check it as the refiner does, run it.

The refiner service serves generators through these functions, and the
trainer's refined-dataset step and the sample sheets use the same ones, so an
image is refined the same way wherever it is refined.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from models import registry
from models.generators import export
from models.generators.networks import NUM_MASK_CLASSES
from models.registry import DEFAULT_LABEL, image_size
from models.repository import LoadedModel, ModelRepository


def warm_up(loaded: LoadedModel, kind: str, default_size: int) -> None:
    """Runs a version's signature at its training size and at an odd size; raises if anything is off.

    Raises:
        ValueError: the version is of another kind, lacks the serving signature,
            or returns images or masks of the wrong shape, type or range.
    """
    import tensorflow as tf

    stated = loaded.metadata.get("kind")
    if stated is not None and stated != kind:
        raise ValueError(
            f"its {registry.METADATA_FILE} says kind {stated!r}; this is a {kind} model"
        )
    if export.SIGNATURE_KEY not in loaded.signatures:
        raise ValueError(f"no {export.SIGNATURE_KEY!r} signature (has {sorted(loaded.signatures)})")
    signature = loaded.signatures[export.SIGNATURE_KEY]
    inputs = set(signature.structured_input_signature[1])
    if inputs != {export.INPUT_IMAGES}:
        raise ValueError(f"serving signature takes {sorted(inputs)}; a refiner takes 'images'")
    rng = np.random.default_rng(0)
    # The contract says any size works: an odd one catches models that only take their own.
    for height, width in (
        image_size(loaded.metadata, default_size),
        (export.MIN_SIDE + 3, export.MIN_SIDE + 5),
    ):
        batch = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        outputs = {k: v.numpy() for k, v in signature(images=tf.constant(batch)).items()}
        images, masks = outputs.get(export.OUTPUT_IMAGES), outputs.get(export.OUTPUT_MASKS)
        if images is None or masks is None:
            raise ValueError(f"serving signature returns {sorted(outputs)}; expected images, masks")
        if images.dtype != np.uint8 or images.shape != batch.shape:
            raise ValueError(
                f"images out: {images.dtype} {list(images.shape)}; expected uint8 {list(batch.shape)}"
            )
        if masks.dtype != np.uint8 or masks.shape != batch.shape[:3]:
            raise ValueError(
                f"masks out: {masks.dtype} {list(masks.shape)}; expected uint8 {list(batch.shape[:3])}"
            )
        if masks.max() >= NUM_MASK_CLASSES:
            raise ValueError(
                f"masks out hold class {masks.max()}; classes are 0..{NUM_MASK_CLASSES - 1}"
            )


def generate(loaded: LoadedModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, 3], masks uint8 [N, H, W]) for a uint8 batch."""
    import tensorflow as tf

    outputs = loaded.signatures[export.SIGNATURE_KEY](images=tf.constant(images))
    return outputs[export.OUTPUT_IMAGES].numpy(), outputs[export.OUTPUT_MASKS].numpy()


def load_generator(model_base: Path, kind: str, name: str, version: int = 0):
    """The generator version to show (`version`, else "stable", else the newest), warmed up.

    Raises:
        ValueError: no version of `name` loads and passes the warm-up.
    """
    repo = ModelRepository(
        Path(model_base),
        name,
        warm_up=functools.partial(warm_up, kind=kind, default_size=64),
        settle_s=0.0,
        specific_versions=(version,) if version else (),
    )
    repo.poll()
    if not repo.loaded():
        problems = "; ".join(f"v{s.version}: {s.error}" for s in repo.statuses() if s.error)
        raise ValueError(
            f"no usable {kind} generator under {repo.folder}"
            + (f" ({problems})" if problems else " (no version folders)")
        )
    if version:
        return repo.resolve(version=version)
    return repo.resolve(label=DEFAULT_LABEL) if DEFAULT_LABEL in repo.labels() else repo.resolve()
