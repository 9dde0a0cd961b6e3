"""The train sub-command: the project's training job, validated on the held-out objects."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.grasp_quality.data import episode_index, open_store, read_manifest, split_episodes
from bench.grasp_quality.report import auc, table


def training_curve(log_dir: Path) -> list[dict]:
    """Per validation step: validation AUC / accuracy and the training batches' loss / accuracy.

    Read back from the TensorBoard logs `training.fit` writes: they are the only
    record of the validations before the last one.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    scalars: dict[str, dict[int, dict[str, float]]] = {"train": {}, "validation": {}}
    for part, steps in scalars.items():
        for path in sorted((log_dir / part).glob("events.out.tfevents.*")):
            for record in tf.data.TFRecordDataset(str(path)):
                event = event_pb2.Event.FromString(record.numpy())
                for value in event.summary.value:
                    number = float(tf.make_ndarray(value.tensor))
                    steps.setdefault(int(event.step), {})[value.tag] = number
    train = scalars["train"]
    curve = []
    for step, metrics in sorted(scalars["validation"].items()):
        # The training metrics logged last before this validation (a window's average).
        logged = [s for s in train if s <= step]
        batches = train[max(logged)] if logged else {}
        curve.append(
            {
                "step": step,
                "train_loss": batches.get("task_loss"),
                "train_batch_accuracy": batches.get("accuracy"),
                "train_scene_loss": batches.get("scene_loss"),
                "validation_auc": metrics.get("auc"),
                "validation_accuracy": metrics.get("accuracy"),
                "validation_log_loss": metrics.get("log_loss"),
            }
        )
    return curve


def score_steps(model, data_root: Path, episodes: Sequence, crop: int) -> dict[str, np.ndarray]:
    """P(success) of every step sample of `episodes` as serving scores it, with label and step."""
    import tensorflow as tf

    from models.episodes import dataset
    from models.grasp_success.model import LOGITS
    from models.grasp_success.samples import MOTION, REAL, center_crop, grasp_motion

    def sample(step: dict) -> dict:
        return {
            dataset.X0: center_crop(step[dataset.X0], crop),
            dataset.XT: center_crop(step[dataset.XT], crop),
            MOTION: grasp_motion(step[dataset.POSE], step[dataset.FINAL_POSE]),
            dataset.DOMAIN: tf.constant(REAL, tf.int32),
            dataset.LABEL: step[dataset.LABEL],
            dataset.STEP: step[dataset.STEP],
        }

    predict = tf.function(lambda batch: tf.sigmoid(model(batch, training=False)[LOGITS]))
    out: dict[str, list] = {"probability": [], "label": [], "step": []}
    for batch in dataset.step_dataset(data_root, episodes).map(sample).batch(256):
        out["probability"].append(predict(batch).numpy())
        out["label"].append(batch[dataset.LABEL].numpy())
        out["step"].append(batch[dataset.STEP].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _quality(scores: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict:
    mask = np.ones(len(scores["label"]), bool) if mask is None else mask
    labels, probabilities = scores["label"][mask], scores["probability"][mask]
    return {
        "samples": int(mask.sum()),
        "success_rate": float(labels.mean()) if len(labels) else None,
        "auc": auc(probabilities, labels),
        "accuracy": float(np.mean((probabilities > 0.5) == (labels > 0.5)))
        if len(labels)
        else None,
        "mean_probability": float(probabilities.mean()) if len(labels) else None,
    }


def train(args: argparse.Namespace) -> dict:
    """Trains, exports and measures one grasp model on a data folder."""
    import tempfile

    from models.grasp_success import profiles, training

    data, models = Path(args.data), Path(args.models)
    settings = read_manifest(data)
    store = open_store(data)
    try:
        train_set, held_out = (split_episodes(store, split) for split in ("train", "test"))
    finally:
        store.close()
    if args.train_episodes:
        train_set = [e for e in train_set if episode_index(e) < args.train_episodes]
    if not train_set or not held_out:
        raise SystemExit(
            f"{data} has {len(train_set)} training and {len(held_out)} held-out episodes; "
            "collect both (collect --train-episodes N --test-episodes M)"
        )
    root = data / "store"
    with tempfile.TemporaryDirectory(prefix="grasp-quality-logs-") as logs:
        try:
            spec = training.TrainSpec(
                recipe="sim-only",
                profile=args.profile,
                steps=args.steps,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                seed=args.seed,
                sim_fraction=1.0,
                scene_weight=args.scene_weight,
                eval_every=args.eval_every,
                keep_best=not args.keep_last,
            )
            result = training.train(
                spec,
                root,
                train_set,
                held_out,
                models,
                log_dir=logs,
                data_selection={"grasp_quality": dataclasses.asdict(settings), "data": str(data)},
            )
        except ValueError as err:
            raise SystemExit(f"training refused: {err}") from None
        curve = training_curve(Path(logs))
    crop = profiles.profile(spec.profile).crop_size
    validation = score_steps(result.model, root, held_out, crop)
    subset = np.random.default_rng(args.seed).permutation(len(train_set))[
        : args.train_eval_episodes
    ]
    train_scores = score_steps(result.model, root, [train_set[i] for i in sorted(subset)], crop)
    per_step = [
        {"step_index": int(s), **_quality(validation, validation["step"] == s)}
        for s in np.unique(validation["step"])
    ]
    return {
        "data": str(data),
        "version": result.version,
        "path": str(result.path),
        "steps": spec.steps,
        "kept_step": int(result.metrics.get("best_step", spec.steps)),
        "steps_per_s": result.steps_per_s,
        "train_episodes": len(train_set),
        "held_out_episodes": len(held_out),
        "curve": curve,
        "kept": {
            "validation": _quality(validation),
            "train_subset": {"episodes": len(subset), **_quality(train_scores)},
        },
        "validation_by_step_index": per_step,
    }


def print_train(result: dict) -> None:
    print(
        f"\nversion {result['version']} at {result['path']}: {result['train_episodes']} training "
        f"episodes (train objects), {result['held_out_episodes']} held-out episodes (test "
        f"objects); {result['steps']} steps at {result['steps_per_s']:.1f} steps/s, weights "
        f"of step {result['kept_step']} kept\n"
    )
    curve = {
        "step": "step",
        "train_loss": "train loss",
        "train_batch_accuracy": "train batch accuracy",
    }
    if any(row.get("train_scene_loss") for row in result["curve"]):
        curve["train_scene_loss"] = "train scene loss"
    curve |= {"validation_auc": "validation AUC", "validation_accuracy": "validation accuracy"}
    print(table(curve, result["curve"]) + "\n")
    quality = {"samples": "samples", "success_rate": "success rate", "auc": "AUC"}
    quality |= {"accuracy": "accuracy", "mean_probability": "mean P"}
    kept = result["kept"]
    rows = [
        {"on": "held-out objects", "episodes": result["held_out_episodes"], **kept["validation"]},
        {"on": "train subset", **kept["train_subset"]},
    ]
    print(table({"on": "kept weights on", "episodes": "episodes", **quality}, rows) + "\n")
    steps = {"step_index": "step index (held out)", **quality}
    print(table(steps, result["validation_by_step_index"]))
