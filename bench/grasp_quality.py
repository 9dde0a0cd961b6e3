"""Grasp-model quality on held-out objects: collect, train, CEM against random, a geometry bound.

Four sub-commands, each printing markdown tables (and writing every number to
`--json PATH`), so one idea about the grasp model costs minutes to check:

    python -m bench.grasp_quality collect --data DIR [--train-episodes 600] [--test-episodes 200]
        [--workers 2] [--attempts 1] [--oracle-fraction 0] [--oracle-sigma-m 0.02]
        [--oracle-yaw-sigma 0.3]
    python -m bench.grasp_quality train --data DIR --models DIR [--steps 1500] [--eval-every 150]
    python -m bench.grasp_quality evaluate --models DIR [--episodes 40] [--planner KEY=VALUE ...]
    python -m bench.grasp_quality geometry [--episodes 200] [--object-set train]

`collect` runs simulated episodes into an episode store folder: training
episodes on the train objects (random exploration, optionally mixed with the
noisy oracle, optionally several attempts per scene) and held-out episodes on
the test objects (always random exploration, one attempt per scene, so
validation numbers stay comparable across data recipes). A rerun collects only
the episodes the folder lacks. `train` trains the grasp model with the
project's training job on the training episodes, validated on the held-out
ones. `evaluate` starts the fleet's services on loopback and lets the sim-farm
grasp held-out objects with CEM on the model and with random exploration, on
the same scenes. `geometry` measures how well privileged geometry alone (the
fingertips' distance to the nearest object) predicts random grasps' success.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

SPLITS = {"train": "train", "test": "test"}  # split -> object set
MANIFEST = "collection.json"
ROBOT_ID = "grasp-quality"
CHUNK = 8  # episodes per worker task: progress stays smooth, task overhead small
THRESHOLDS_M = (0.0, 0.01, 0.02, 0.04)


@dataclass(frozen=True)
class DataSettings:
    """How a data folder's episodes are made; fixed for the folder (its collection.json).

    Attributes:
        seed: Seeds every scene and policy; the same seed replays the same episodes.
        attempts: Attempts per training scene: the scene is reset from the same seed and
            the policy gets another seed each time.
        oracle_fraction: Share of training episodes from the noisy oracle (the rest explore
            randomly).
        oracle_sigma_m: The noisy oracle's grasp-point noise (std, metres, x and y).
        oracle_yaw_sigma_rad: The noisy oracle's closing-direction noise (std, radians).
        max_steps: Steps per episode at most (the last one closes).
        objects_per_bin: Objects dropped into the tray per scene.
    """

    seed: int = 1
    attempts: int = 1
    oracle_fraction: float = 0.0
    oracle_sigma_m: float = 0.02
    oracle_yaw_sigma_rad: float = 0.3
    max_steps: int = 8
    objects_per_bin: int = 5

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.max_steps < 1 or not 1 <= self.objects_per_bin <= 20:
            raise ValueError("attempts and max_steps must be at least 1, objects_per_bin 1..20")
        if not 0.0 <= self.oracle_fraction <= 1.0:
            raise ValueError(f"oracle_fraction={self.oracle_fraction}: use 0..1")
        if self.oracle_sigma_m < 0 or self.oracle_yaw_sigma_rad < 0:
            raise ValueError("the noisy oracle's standard deviations must not be negative")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table(columns: dict[str, str], rows: Iterable[dict]) -> str:
    """A markdown table of `rows` (dicts); `columns` maps each key to its header.

    Columns holding only numbers are right-aligned.
    """
    rows = list(rows)

    def numeric(key: str) -> bool:
        return all(isinstance(row.get(key), int | float | None) for row in rows)

    align = ["---:" if numeric(key) else "---" for key in columns]
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None without both labels."""
    scores, positive = np.asarray(scores, float), np.asarray(labels) > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based ranks
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# -- simulated episodes, in this process or in spawned worker processes ---------------

_WORLDS: dict = {}  # one world per object set and worker process, built on first use


def _world(object_set: str, objects_per_bin: int = 5):
    from robots.config import WorldConfig
    from robots.world import GraspWorld

    key = (object_set, objects_per_bin)
    if key not in _WORLDS:
        _WORLDS[key] = GraspWorld(
            WorldConfig(object_set=object_set, objects_per_bin=objects_per_bin)
        )
    return _WORLDS[key]


def run_tasks(task: Callable, jobs: list, workers: int, desc: str) -> Iterable:
    """Results of `task(job)` for every job, in this process (workers=1) or a spawned pool."""
    with tqdm(total=len(jobs), desc=desc, unit="task", file=sys.stderr) as bar:
        if workers <= 1 or len(jobs) <= 1:
            try:
                for job in jobs:
                    yield task(job)
                    bar.update(1)
            finally:
                while _WORLDS:
                    _WORLDS.popitem()[1].close()
            return
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(task, jobs):
                yield result
                bar.update(1)


def _safe(policy, world):
    # The sim-farm's rules for every command (step length, unit rotation), so these
    # episodes are the ones the farm would collect.
    from services.robot_agent.control import SafePolicy

    return SafePolicy(policy, world.config.workspace.max_step_cm)


def episode_plan(settings: DataSettings, split: str, index: int) -> tuple[int, int, int, str]:
    """(scene seed, attempt, policy seed, policy name) of one episode of a split."""
    from services.sim_farm.worker import episode_seed

    if split == "test":
        scene = episode_seed(settings.seed, 1, index)
        return scene, 0, scene, "random"
    scene_index, attempt = divmod(index, settings.attempts)
    scene = episode_seed(settings.seed, 0, scene_index)
    draw = np.random.default_rng(episode_seed(settings.seed, 2, index)).random()
    policy = "noisy-oracle" if draw < settings.oracle_fraction else "random"
    return scene, attempt, scene + attempt, policy


def episode_id(split: str, index: int) -> str:
    return f"{split}-e{index:06d}"


def episode_index(summary) -> int:
    """The index `episode_id` gave a stored episode within its split."""
    return int(summary.episode_id.rpartition("-e")[2])


def collect_chunk(job: tuple[DataSettings, str, list[int]]) -> list:
    """Runs some episodes of a split; returns their store records (picklable)."""
    from robots.episode import run_episode
    from robots.policies import NoisyOraclePolicy, RandomPolicy
    from services.common import episodes

    settings, split, indices = job
    world = _world(SPLITS[split], settings.objects_per_bin)
    policies = {
        "random": RandomPolicy(world),
        "noisy-oracle": NoisyOraclePolicy(
            world, settings.oracle_sigma_m, settings.oracle_yaw_sigma_rad
        ),
    }
    records = []
    for index in indices:
        scene, attempt, policy_seed, name = episode_plan(settings, split, index)
        run = run_episode(
            world, _safe(policies[name], world), scene, settings.max_steps, policy_seed=policy_seed
        )
        record = episodes.to_record(
            run,
            episode_id=episode_id(split, index),
            robot_id=ROBOT_ID,
            domain="sim",
            randomization="none",
            policy=name,
            object_set=SPLITS[split],
            collection_id=split,
            with_masks=False,
        )
        record.header.attributes.update(attempt=str(attempt), policy_seed=str(policy_seed))
        records.append(record)
    return records


# -- the data folder: an episode store plus the settings it was collected with ----------


def open_store(data: Path):
    from services.episode_store.metadata import open_metadata_store
    from services.episode_store.store import EpisodeStore

    store_dir = data / "store"
    store_dir.mkdir(parents=True, exist_ok=True)
    # The store service's own layout, so `graspfleet store serve --data-dir` can serve it too.
    return EpisodeStore(
        store_dir, open_metadata_store(sqlite_path=str(store_dir / "episodes.sqlite"))
    )


def split_episodes(store, split: str) -> list:
    """Labeled episodes of one split, by index."""
    from graspfleet.v1 import episode_store_pb2
    from services.episode_store.dataset import labeled

    found, token = [], ""
    while True:
        page = store.list(
            episode_store_pb2.ListEpisodesRequest(
                filter=episode_store_pb2.EpisodeFilter(collection_id=split),
                page_size=1000,
                page_token=token,
            )
        )
        found += page.episodes
        token = page.next_page_token
        if not token:
            return sorted(labeled(found), key=lambda e: e.episode_id)


def read_manifest(data: Path) -> DataSettings:
    path = data / MANIFEST
    if not path.exists():
        raise SystemExit(f"no collection in {data}: run `collect --data {data}` first")
    return DataSettings(**json.loads(path.read_text())["settings"])


def collect(settings: DataSettings, data: Path, counts: dict[str, int], workers: int) -> dict:
    """Adds the missing episodes of each split to the data folder; returns the summary."""
    from services.common.files import write_atomically

    data.mkdir(parents=True, exist_ok=True)
    path = data / MANIFEST
    if path.exists():
        stored = read_manifest(data)
        if stored != settings:
            changed = {
                f.name: (getattr(stored, f.name), getattr(settings, f.name))
                for f in dataclasses.fields(settings)
                if getattr(stored, f.name) != getattr(settings, f.name)
            }
            raise SystemExit(
                f"{data} holds episodes collected with other settings (stored, asked): {changed}; "
                "collect into another --data folder"
            )
    else:
        write_atomically(path, json.dumps({"settings": dataclasses.asdict(settings)}).encode())
    store = open_store(data)
    try:
        started, new = time.perf_counter(), 0
        for split, count in counts.items():
            present = {e.episode_id for e in split_episodes(store, split)}
            missing = [i for i in range(count) if episode_id(split, i) not in present]
            if not missing:
                log(f"{split}: the folder already has {count} episodes; nothing to collect")
                continue
            jobs = [
                (settings, split, missing[i : i + CHUNK]) for i in range(0, len(missing), CHUNK)
            ]
            desc = f"{split} ({len(missing)} episodes)"
            for records in run_tasks(collect_chunk, jobs, workers, desc):
                for record in records:
                    store.ingest(record)
                new += len(records)
        seconds = time.perf_counter() - started
        rows = []
        for split, count in counts.items():
            chosen = [e for e in split_episodes(store, split) if episode_index(e) < count]
            for policy in sorted({e.policy for e in chosen}):
                mine = [e for e in chosen if e.policy == policy]
                successes = sum(e.label.success for e in mine)
                rows.append(
                    {
                        "split": split,
                        "objects": SPLITS[split],
                        "policy": policy,
                        "episodes": len(mine),
                        "steps": sum(e.num_steps for e in mine),
                        "successes": successes,
                        "success_rate": successes / len(mine),
                    }
                )
    finally:
        store.close()
    return {
        "data": str(data),
        "settings": dataclasses.asdict(settings),
        "new_episodes": new,
        "seconds": seconds,
        "episodes_per_s": new / seconds if new else None,
        "splits": rows,
    }


def print_collect(result: dict) -> None:
    s = result["settings"]
    print(
        f"\ndata: {result['data']}; attempts per training scene {s['attempts']}, noisy-oracle "
        f"share {s['oracle_fraction']} (sigma {s['oracle_sigma_m']} m, "
        f"{s['oracle_yaw_sigma_rad']} rad); {result['new_episodes']} new episodes in "
        f"{result['seconds']:.0f} s\n"
    )
    columns = {"split": "split", "objects": "objects", "policy": "policy", "episodes": "episodes"}
    columns |= {"steps": "steps", "successes": "successes", "success_rate": "success rate"}
    print(table(columns, result["splits"]))


# -- train: the project's training job, validated on the held-out objects ---------------


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
                "validation_auc": metrics.get("auc"),
                "validation_accuracy": metrics.get("accuracy"),
                "validation_log_loss": metrics.get("log_loss"),
            }
        )
    return curve


def score_steps(model, data_root: Path, episodes: Sequence, crop: int) -> dict[str, np.ndarray]:
    """P(success) of every step sample of `episodes` as serving scores it, with label and step."""
    import tensorflow as tf

    from services.episode_store import dataset
    from services.grasp_predictor.model import LOGITS
    from services.grasp_predictor.samples import MOTION, REAL, center_crop, grasp_motion

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

    from services.grasp_predictor import profiles, training

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


# -- evaluate: CEM against random exploration on held-out objects, closed loop ----------


def _binomial(successes: int, n: int) -> tuple[float, float]:
    rate = successes / n if n else 0.0
    return rate, math.sqrt(rate * (1.0 - rate) / n) if n else 0.0


def behaviour(stub, summaries: Sequence, max_steps: int) -> dict:
    """What the command source did: steps, closes before the last step, raises, closing heights."""
    from graspfleet.v1 import common_pb2, episode_store_pb2
    from robots.config import Workspace

    floor = Workspace().low[2]
    steps, raises, heights, predicted = [], [], [], []
    for summary in summaries:
        episode = stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(episode_id=summary.episode_id, include_steps=True),
            timeout=30,
        )
        steps.append(len(episode.steps))
        raises.append(sum(s.command.kind == common_pb2.Command.KIND_RAISE for s in episode.steps))
        heights.append((episode.outcome.final_pose.position_m.z - floor) * 100.0)
        if episode.steps and episode.steps[-1].HasField("predicted_success"):
            predicted.append(episode.steps[-1].predicted_success)
    if not steps:
        return {}
    p10, p50, p90 = (float(v) for v in np.percentile(heights, [10, 50, 90]))
    return {
        "mean_steps": float(np.mean(steps)),
        # The last step always closes; a close before it is the command source's own choice.
        "closed_early": int(sum(n < max_steps for n in steps)),
        "raises_per_episode": float(np.mean(raises)),
        "close_height_cm_p10": p10,
        "close_height_cm_p50": p50,
        "close_height_cm_p90": p90,
        "mean_predicted_success_at_close": float(np.mean(predicted)) if predicted else None,
    }


def evaluate(args: argparse.Namespace) -> dict:
    """CEM on the newest model under --models against random exploration, same held-out scenes."""
    from graspfleet.v1 import common_pb2, episode_store_pb2, sim_farm_pb2
    from services.episode_store import client
    from services.fleet.run import Fleet, _collect
    from services.grasp_predictor import export

    models = Path(args.models).resolve()
    versions = export.versions(models / export.DEFAULT_NAME)
    if not versions:
        raise SystemExit(
            f"no model versions under {models / export.DEFAULT_NAME}: run `train --models {models}`"
        )
    planner_flags = dict(_key_value(item) for item in args.planner)
    work = Path(args.work) / time.strftime("%Y%m%d-%H%M%S")
    Policy = sim_farm_pb2.CollectionPolicy
    fleet = Fleet(work)
    try:
        store = fleet.start("episode-store", ["store", "serve"], {"data_dir": str(work / "store")})
        predictor = fleet.start(
            "grasp-predictor",
            ["predictor", "serve"],
            {"model_base_path": str(models), "poll_interval_s": "1"},
        )
        planner = fleet.start(
            "servo-planner",
            ["planner", "serve"],
            {"predictor_address": predictor.address, **planner_flags},
        )
        farm = fleet.start(
            "sim-farm",
            ["sim-farm", "serve"],
            {
                "store_address": store.address,
                "planner_address": planner.address,
                "spool_dir": str(work / "spool"),
                "workers": str(args.workers),
            },
        )
        results = {}
        for name, kind in (("cem", Policy.KIND_CEM), ("random", Policy.KIND_RANDOM)):
            # Equal seeds and shard counts: both policies meet exactly the same scenes.
            spec = sim_farm_pb2.CollectionSpec(
                num_episodes=args.episodes,
                num_shards=min(args.workers, args.episodes),
                max_steps=args.max_steps,
                domain=common_pb2.DOMAIN_SIM,
                randomization=common_pb2.RANDOMIZATION_NONE,
                object_set="test",
                policy=Policy(kind=kind),
                seed=args.seed,
            )
            collection = _collect(farm, spec, f"eval-{name}", f"{name} on held-out objects")
            channel, stub = client.connect(store.address)
            with channel:
                found = list(
                    client.list_all(
                        stub, episode_store_pb2.EpisodeFilter(collection_id=f"eval-{name}")
                    )
                )
                rate, error = _binomial(collection.successes, collection.episodes_done)
                results[name] = {
                    "episodes": collection.episodes_done,
                    "successes": collection.successes,
                    "success_rate": rate,
                    "standard_error": error,
                    "outcomes": {e.seed: bool(e.label.success) for e in found},
                    **behaviour(stub, found, args.max_steps),
                }
    finally:
        fleet.stop()
    cem, rnd = results["cem"].pop("outcomes"), results["random"].pop("outcomes")
    pairs = [(cem[seed], rnd[seed]) for seed in cem.keys() & rnd.keys()]
    return {
        "models": str(models),
        "version": versions[-1],
        "planner": planner_flags,
        "episodes": args.episodes,
        "seed": args.seed,
        "work": str(work),
        "policies": results,
        "paired": paired(pairs),
    }


def paired(pairs: Sequence[tuple[bool, bool]]) -> dict:
    """Outcomes of CEM and random on the same scenes, and their difference with its standard error.

    The paired standard error uses only the scenes where the two differ, which
    is what makes a same-scene comparison sharper than two independent rates.
    """
    n = len(pairs)
    cem_only = sum(c and not r for c, r in pairs)
    random_only = sum(r and not c for c, r in pairs)
    variance = (cem_only + random_only) / n**2 - (cem_only - random_only) ** 2 / n**3 if n else 0
    return {
        "scenes": n,
        "both": sum(c and r for c, r in pairs),
        "cem_only": cem_only,
        "random_only": random_only,
        "neither": sum(not (c or r) for c, r in pairs),
        "difference": (cem_only - random_only) / n if n else None,
        "difference_standard_error": math.sqrt(max(variance, 0.0)) if n else None,
    }


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(
            f"--planner {item!r}: give planner settings as KEY=VALUE, e.g. close_ratio=0.8"
        )
    return key.replace("-", "_"), value


def print_evaluate(result: dict) -> None:
    flags = ", ".join(f"{k}={v}" for k, v in result["planner"].items()) or "defaults"
    print(
        f"\nmodel {result['models']} (version {result['version']}), planner {flags}; "
        f"{result['episodes']} episodes per policy on held-out objects, seed {result['seed']}\n"
    )
    rows = [{"policy": name, **p} for name, p in result["policies"].items()]
    columns = {"policy": "policy", "episodes": "episodes", "successes": "successes"}
    columns |= {"success_rate": "success rate", "standard_error": "standard error"}
    print(table(columns, rows))
    pairs = result["paired"]
    print(
        f"\nsame {pairs['scenes']} scenes: both succeed {pairs['both']}, CEM only "
        f"{pairs['cem_only']}, random only {pairs['random_only']}, neither {pairs['neither']}; "
        f"CEM - random {_cell(pairs['difference'])} +- {_cell(pairs['difference_standard_error'])}\n"
    )
    columns = {"policy": "policy", "mean_steps": "mean steps", "closed_early": "closed early"}
    columns |= {"raises_per_episode": "raises / episode", "close_height_cm_p10": "close z p10 cm"}
    columns |= {"close_height_cm_p50": "p50 cm", "close_height_cm_p90": "p90 cm"}
    print(table(columns | {"mean_predicted_success_at_close": "mean P at close"}, rows))


# -- geometry: how far privileged geometry alone predicts random grasps ----------------


def geometry_chunk(job: tuple[str, int, int, list[int]]) -> list[tuple[float, bool]]:
    """(fingertip distance to the nearest object's bounding box in x-y, success) per episode."""
    from robots.episode import run_episode
    from robots.policies import CLOSE, RandomPolicy
    from services.sim_farm.worker import episode_seed

    object_set, seed, max_steps, indices = job
    world = _world(object_set)
    policy = _safe(RandomPolicy(world), world)
    out = []
    for index in indices:
        at_close: dict = {}

        def on_step(record, at_close=at_close) -> None:
            # Before the grasp moves anything: where the fingers are and where the objects lie.
            if record.action.kind == CLOSE:
                at_close["pose"], at_close["boxes"] = world.pose(), world.object_aabbs()

        run = run_episode(world, policy, episode_seed(seed, 3, index), max_steps, on_step)
        pose = at_close["pose"]
        tip = pose.position[:2] + world.fingertip_offset(pose.yaw)[:2]
        distance = min(
            float(np.linalg.norm(np.maximum(0.0, np.maximum(low[:2] - tip, tip - high[:2]))))
            for low, high in at_close["boxes"]
        )
        out.append((distance, bool(run.success)))
    return out


def geometry(args: argparse.Namespace) -> dict:
    """The learnability bound of privileged geometry for random grasps."""
    jobs = [
        (args.object_set, args.seed, args.max_steps, list(range(i, min(i + CHUNK, args.episodes))))
        for i in range(0, args.episodes, CHUNK)
    ]
    pairs = [
        p for chunk in run_tasks(geometry_chunk, jobs, args.workers, "geometry") for p in chunk
    ]
    distance = np.array([d for d, _ in pairs])
    success = np.array([s for _, s in pairs], float)
    rows = []
    for threshold in THRESHOLDS_M:
        near = distance <= threshold
        rows.append(
            {
                "within_m": threshold,
                "share": float(near.mean()),
                "success_within": float(success[near].mean()) if near.any() else None,
                "success_outside": float(success[~near].mean()) if (~near).any() else None,
            }
        )
    return {
        "episodes": len(pairs),
        "object_set": args.object_set,
        "seed": args.seed,
        "success_rate": float(success.mean()),
        "auc_negative_distance": auc(-distance, success),
        "over_an_object": rows[0],
        "thresholds": rows,
    }


def print_geometry(result: dict) -> None:
    print(
        f"\n{result['episodes']} random grasps on {result['object_set']} objects: success "
        f"{result['success_rate']:.3f}; AUC of -distance(fingertip centre, nearest object's "
        f"bounding box) {_cell(result['auc_negative_distance'])}\n"
    )
    rows = [{**r, "within_cm": round(r["within_m"] * 100)} for r in result["thresholds"]]
    columns = {"within_cm": "fingertip centre within (cm) of an object", "share": "share"}
    columns |= {"success_within": "success within", "success_outside": "success outside"}
    print(table(columns, rows))


# -- command line ------------------------------------------------------------------------


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: need at least 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.grasp_quality", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", help="also write every number to this JSON file")
        return sub

    c = command("collect", "random-policy sim episodes on train and held-out objects")
    c.add_argument("--data", required=True, help="data folder (an episode store plus settings)")
    c.add_argument("--train-episodes", type=_count, default=600, help="episodes on train objects")
    c.add_argument("--test-episodes", type=_count, default=200, help="episodes on held-out objects")
    c.add_argument(
        "--workers", type=_positive, default=2, help="worker processes (1: this process)"
    )
    c.add_argument("--attempts", type=_positive, default=1, help="attempts per training scene")
    c.add_argument("--oracle-fraction", type=float, default=0.0, help="noisy-oracle share")
    c.add_argument("--oracle-sigma-m", type=float, default=0.02, help="grasp point noise, m")
    c.add_argument("--oracle-yaw-sigma", type=float, default=0.3, help="closing yaw noise, rad")
    c.add_argument("--max-steps", type=_positive, default=8)
    c.add_argument("--seed", type=int, default=1)

    t = command("train", "train the grasp model on a data folder, validated on held-out objects")
    t.add_argument("--data", required=True)
    t.add_argument("--models", required=True, help="model base path; the version goes under it")
    t.add_argument("--steps", type=_positive, default=1500)
    t.add_argument("--eval-every", type=_count, default=150, help="validate every N steps")
    t.add_argument("--batch-size", type=_positive, default=32)
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--profile", default="default")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-episodes", type=_count, default=0, help="use the first N (0: all)")
    t.add_argument(
        "--train-eval-episodes",
        type=_positive,
        default=200,
        help="training episodes scored at the end, to show memorization",
    )
    t.add_argument(
        "--keep-last",
        action="store_true",
        help="export the last step's weights, not the best validated ones",
    )

    e = command("evaluate", "CEM on a model against random exploration, held-out objects")
    e.add_argument("--models", required=True, help="model base path; its newest version serves")
    e.add_argument("--episodes", type=_positive, default=40, help="episodes per policy")
    e.add_argument("--workers", type=_positive, default=2, help="sim-farm worker processes")
    e.add_argument("--seed", type=int, default=99)
    e.add_argument("--max-steps", type=_positive, default=8)
    e.add_argument(
        "--planner",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="servo-planner settings, e.g. close_ratio=0.8 grasp_band_m=0.02",
    )
    e.add_argument(
        "--work",
        default="var/grasp-quality/evaluations",
        help="each evaluation's services and store go to a new folder under it",
    )

    g = command("geometry", "how well fingertip-to-object distance predicts random grasps")
    g.add_argument("--episodes", type=_positive, default=200)
    g.add_argument("--object-set", default="train", choices=sorted(SPLITS.values()))
    g.add_argument("--workers", type=_positive, default=1)
    g.add_argument("--max-steps", type=_positive, default=8)
    g.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "collect":
        try:
            settings = DataSettings(
                seed=args.seed,
                attempts=args.attempts,
                oracle_fraction=args.oracle_fraction,
                oracle_sigma_m=args.oracle_sigma_m,
                oracle_yaw_sigma_rad=args.oracle_yaw_sigma,
                max_steps=args.max_steps,
            )
        except ValueError as err:
            raise SystemExit(f"collect: {err}") from None
        counts = {"train": args.train_episodes, "test": args.test_episodes}
        result = collect(settings, Path(args.data), counts, args.workers)
        print_collect(result)
    elif args.command == "train":
        result = train(args)
        print_train(result)
    elif args.command == "evaluate":
        result = evaluate(args)
        print_evaluate(result)
    else:
        result = geometry(args)
        print_geometry(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({args.command: result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
