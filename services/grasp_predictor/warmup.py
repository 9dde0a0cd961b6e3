"""The grasp model's warm-up check: a version serves only if its outputs make sense."""

from __future__ import annotations

import numpy as np

from models.grasp_success import tensors
from models.registry import image_size
from models.repository import LoadedModel

WARMUP_PAIRS = 2
WARMUP_MOTIONS = 8


def grasp_warm_up(loaded: LoadedModel, default_size: int) -> None:
    """Runs the serving signature on random scenes and motions.

    A version that also has the feature signatures (`image_features`,
    `score_features`) must give the same probabilities through them.

    Raises:
        ValueError: the signature is missing, takes other inputs, or returns
            anything but finite probabilities of shape [pairs, motions]; or
            the feature signatures come alone or disagree with it.
    """
    import tensorflow as tf

    if tensors.DEFAULT_SIGNATURE not in loaded.signatures:
        raise ValueError(
            f"no {tensors.DEFAULT_SIGNATURE!r} signature (has {sorted(loaded.signatures)})"
        )
    signature = loaded.signatures[tensors.DEFAULT_SIGNATURE]
    specs = tensors.input_specs(signature)
    if set(specs) != {"x0", "xt", "motions"}:
        raise ValueError(
            f"serving signature takes {sorted(specs)}; a grasp model takes x0, xt, motions"
        )
    height, width = image_size(loaded.metadata, default_size)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (WARMUP_PAIRS, height, width, 3), dtype=np.uint8)
    angle = rng.uniform(-np.pi, np.pi, (WARMUP_PAIRS, WARMUP_MOTIONS))
    motions = np.concatenate(
        [
            rng.normal(0, 5, (WARMUP_PAIRS, WARMUP_MOTIONS, 3)),
            np.sin(angle)[..., None],
            np.cos(angle)[..., None],
        ],
        axis=-1,
    ).astype(np.float32)
    outputs = signature(
        x0=tf.constant(images), xt=tf.constant(images[::-1]), motions=tf.constant(motions)
    )
    if len(outputs) != 1:
        raise ValueError(
            f"serving signature returns {sorted(outputs)}; expected one probability output"
        )
    ((name, value),) = outputs.items()
    value = value.numpy()
    if value.shape != (WARMUP_PAIRS, WARMUP_MOTIONS):
        raise ValueError(
            f"output {name!r} has shape {list(value.shape)}; expected [{WARMUP_PAIRS}, {WARMUP_MOTIONS}]"
        )
    if not np.isfinite(value).all() or value.min() < 0 or value.max() > 1:
        raise ValueError(
            f"output {name!r} is not a probability: range [{value.min()}, {value.max()}]"
        )
    _check_feature_signatures(loaded, images, motions, value)


def _check_feature_signatures(
    loaded: LoadedModel, images: np.ndarray, motions: np.ndarray, expected: np.ndarray
) -> None:
    import tensorflow as tf

    split = (tensors.FEATURES_SIGNATURE, tensors.SCORE_FEATURES_SIGNATURE)
    present = [name for name in split if name in loaded.signatures]
    if not present:
        return
    if len(present) == 1:
        raise ValueError(f"signature {present[0]!r} without its other half (need both of {split})")
    (features,) = loaded.signatures[tensors.FEATURES_SIGNATURE](
        x0=tf.constant(images), xt=tf.constant(images[::-1])
    ).values()
    (scored,) = loaded.signatures[tensors.SCORE_FEATURES_SIGNATURE](
        features=features, motions=tf.constant(motions)
    ).values()
    scored = scored.numpy()
    if scored.shape != expected.shape:
        raise ValueError(
            f"{split[1]!r} returns shape {list(scored.shape)}; "
            f"{tensors.DEFAULT_SIGNATURE!r} returns {list(expected.shape)}"
        )
    gap = float(np.max(np.abs(scored - expected)))
    if gap > 1e-5:
        raise ValueError(
            f"{split[0]!r} + {split[1]!r} disagree with {tensors.DEFAULT_SIGNATURE!r} by up to {gap:.2g}"
        )
