"""The validation gates: a grasp model must not do worse than stable; a generator must keep the scene.

Both models are scored the way the predictor serves them (their SavedModel
serving signature: uint8 episode images, centre crop, REAL statistics) on the
same held-out real samples, so the comparison is like for like. The paper
selected models by accuracy of C on held-out real samples; the gate uses the
AUC, because CEM uses a model only through the order of its scores: a model
whose every probability sits below 0.5 (fleet episodes are mostly failures)
ranks grasps as well as a calibrated one, and any accuracy at a threshold,
balanced or not, would call it useless (0.5) whatever its ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from graspfleet.v1 import episode_store_pb2
from models import scoring
from models.episodes.dataset import LABEL, X0, XT
from models.episodes.selection import labeled
from models.grasp_success.export import (
    INPUT_MOTIONS,
    INPUT_X0,
    INPUT_XT,
    OUTPUT_SUCCESS,
    SIGNATURE_KEY,
)
from models.grasp_success.samples import MOTION, step_samples

# (x0, xt, motions [B, K, 5]) -> P(success) [B, K], as the serving signature computes it.
ServeFn = Callable[..., object]


@dataclass(frozen=True)
class Decision:
    """The gate's verdict and the numbers behind it."""

    passed: bool
    message: str
    metrics: dict[str, float] = field(default_factory=dict)


def decide(
    candidate_auc: float | None,
    stable_auc: float | None,
    stable_version: int | None,
    samples: int,
    *,
    enabled: bool,
    max_regression: float,
) -> Decision:
    """Passes unless the candidate's AUC is more than `max_regression` below stable's.

    A first model (no stable version) passes. A negative `max_regression` demands
    an improvement of at least its magnitude. Held-out samples of one class only
    (an AUC of None) cannot rank anything: the run passes with that said, as the
    rollout on the arms' grasps still judges it.
    """
    numbers = {"samples": float(samples)}
    if candidate_auc is None:
        verdict = "one class only: the held-out samples cannot compare models"
        return Decision(True, f"no held-out real AUC on {samples} samples ({verdict})", numbers)
    numbers["candidate_auc"] = candidate_auc
    head = f"held-out real AUC {candidate_auc:.4f} on {samples} samples"
    if stable_auc is None or stable_version is None:
        verdict = "no stable version to compare with" if enabled else "gate disabled"
        return Decision(True, f"{head}; {verdict}", numbers)
    numbers |= {
        "stable_auc": stable_auc,
        "stable_version": float(stable_version),
        "max_regression": max_regression,
    }
    drop = stable_auc - candidate_auc
    versus = f"{head} vs stable version {stable_version}: {stable_auc:.4f} (drop {drop:+.4f})"
    if not enabled:
        return Decision(True, f"{versus}; gate disabled by the RunSpec", numbers)
    if drop > max_regression + 1e-9:
        return Decision(
            False, f"{versus} exceeds max_regression {max_regression:+.4f}; not published", numbers
        )
    return Decision(True, f"{versus} within max_regression {max_regression:+.4f}", numbers)


# The mask classes whose place in the image the scene gate checks: what a grasp depends on.
SCENE_CLASSES = ("arm", "object")


def decide_scene(
    metrics: dict[str, float],
    *,
    enabled: bool,
    min_mask_accuracy: float,
    min_mask_iou: float,
) -> Decision:
    """The generator gate: G's masks on held-out sim images must match the simulator's.

    A generator that moved the arm or an object would teach the grasp model
    wrong geometry, and its mask head, trained alongside the image, says where
    it put them. Realism is not gated here: it shows in the accuracy of the
    grasp models trained on the refined data, which their own gate measures.

    Args:
        metrics: Scene metrics of held-out sim episodes (`mask_accuracy`, `mask_iou_<class>`).
        enabled: False publishes whatever the numbers (they are still recorded).
        min_mask_accuracy: Least share of pixels of the right class.
        min_mask_iou: Least IoU of each of SCENE_CLASSES.
    """
    ious = {c: metrics[f"mask_iou_{c}"] for c in SCENE_CLASSES if f"mask_iou_{c}" in metrics}
    numbers = {
        "min_mask_accuracy": min_mask_accuracy,
        "min_mask_iou": min_mask_iou,
        **{k: metrics[k] for k in ("mask_accuracy", "samples") if k in metrics},
    }
    if "mask_accuracy" not in metrics or not ious:
        if not enabled:
            return Decision(True, "no scene metrics; gate disabled by the RunSpec", numbers)
        return Decision(
            False,
            "no held-out simulated episode with masks to measure scene preservation on; "
            "not published",
            numbers,
        )
    head = f"held-out sim mask accuracy {metrics['mask_accuracy']:.4f} (least {min_mask_accuracy})"
    head += "".join(f", {c} IoU {v:.4f}" for c, v in ious.items())
    head += f" (least {min_mask_iou})"
    if not enabled:
        return Decision(True, f"{head}; gate disabled by the RunSpec", numbers)
    short = [c for c, v in ious.items() if v < min_mask_iou]
    if metrics["mask_accuracy"] < min_mask_accuracy or short:
        return Decision(
            False, f"{head}: the generator does not keep the scene; not published", numbers
        )
    return Decision(True, f"{head}: the scene is kept", numbers)


def serving_auc(
    serve: ServeFn,
    data_root: str | Path,
    episodes: Sequence[episode_store_pb2.EpisodeSummary],
    batch_size: int = 64,
) -> tuple[float | None, int]:
    """(AUC, samples) of a serving function over every step of the labeled `episodes`.

    The AUC is None when the samples hold one class only (or none).
    """
    probabilities, labels = [], []
    for batch in step_samples(data_root, labeled(episodes)).batch(batch_size):
        inputs = {
            INPUT_X0: batch[X0],
            INPUT_XT: batch[XT],
            INPUT_MOTIONS: tf.cast(batch[MOTION], tf.float32)[:, None, :],
        }
        probabilities.append(np.asarray(serve(**inputs)[OUTPUT_SUCCESS])[:, 0])
        labels.append(batch[LABEL].numpy())
    if not labels:
        return None, 0
    label = np.concatenate(labels)
    return scoring.auc(np.concatenate(probabilities), label), len(label)


def load_serving(path: Path) -> ServeFn:
    """The serving signature of a published version."""
    loaded = tf.saved_model.load(str(path))

    def serve(**inputs):
        # The closure keeps `loaded` alive: its signature needs the module's variables.
        return loaded.signatures[SIGNATURE_KEY](**inputs)

    return serve
