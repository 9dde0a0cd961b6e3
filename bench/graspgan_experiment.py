"""GraspGAN at this machine's scale: grasp models on raw and on refined sim data, judged on proxy-real.

The paper's comparison (Tables II and III), in one process from a fresh work
folder, with no services to start:

1. collect simulated episodes with masks and proxy-real episodes on held-out
   objects (a kuka-02-like arm), random exploration, through the sim-farm's
   worker (`services/sim_farm/worker.py`) into an in-process episode store;
2. split the proxy-real episodes by object into training (unlabeled images for
   GraspGAN, labels for the DANN rows) and validation;
3. train GraspGAN without real labels and report scene preservation (G's masks
   against the sim masks on held-out sim episodes);
4. refine every simulated training episode with the exported generator
   (`services/trainer/refine_dataset.py`, as the trainer's job does);
5. train grasp models with identical settings on raw and on refined sim data
   (SIM_ONLY vs GRASPGAN_SIM_ONLY; with --dann also DANN vs GRASPGAN_DANN_DBN,
   both with the same generator), each with --grasp-seeds seeds, and report
   accuracy, balanced accuracy and AUC on the held-out proxy-real episodes
   (per seed, their mean, and refined minus raw paired by seed);
6. train one small domain classifier to tell raw sim from real and one to tell
   refined sim from real, on disjoint train and test images (episodes split in
   two), and report their test accuracy (0.5: indistinguishable).

It prints a markdown table and writes it (results.md) and every number
(results.json) to the output folder.

    python -m bench.graspgan_experiment [--out DIR] [--quick] [--sim-episodes 1000]
        [--real-episodes 400] [--graspgan-steps 2000] [--grasp-steps 2000] [--dann]
        [--sim-store DIR] [--scene-weight 1.0] [--grasp-seeds 1]

`--sim-store` starts from an episode store folder collected before (for
example `var/grasp-quality/masked-12k/store`, from `bench.grasp_quality
collect --masks`): its simulated episodes on the train objects replace the
collected ones (its files are linked, never changed), so the grasp models can
be trained at the data scale where they generalize.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import queue
import shutil
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

SIM_OBJECTS = "train"  # the simulated episodes' objects; proxy-real uses its arm's held-out set

QUICK = {
    "sim_episodes": 80,
    "real_episodes": 60,
    "graspgan_steps": 60,
    "graspgan_batch": 8,
    "grasp_steps": 200,
    "classifier_steps": 100,
}


@dataclass(frozen=True)
class Settings:
    """One experiment; the defaults take 20 to 30 minutes on 2 CPU cores.

    `scene_weight` is the grasp models' auxiliary scene loss (refined episodes
    keep the sim masks); `classifier_episodes` bounds the sim episodes on each
    side of a domain classifier; `sim_store` is a store folder whose sim
    episodes (train objects, with masks) replace the `sim_episodes` collected.
    """

    sim_episodes: int = 1000
    real_episodes: int = 400
    real_validation_fraction: float = 0.25
    max_steps: int = 8
    graspgan_steps: int = 2000
    graspgan_batch: int = 16
    refiner_profile: str = "default"
    grasp_steps: int = 2000
    grasp_batch: int = 32
    grasp_seeds: int = 1
    scene_weight: float = 1.0
    classifier_steps: int = 300
    classifier_episodes: int = 500
    sim_store: str = ""
    dann: bool = False
    real_arm: str = "kuka-02"
    seed: int = 0
    workers: int = 2


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def collect(settings: Settings, store_address: str, spool_dir: Path) -> None:
    """Simulated and proxy-real episodes into the store, through the sim-farm's worker."""
    from robots.inventory import find_arm
    from services.sim_farm.worker import ShardJob, run_shard

    arm = find_arm(settings.real_arm)
    sim_episodes = 0 if settings.sim_store else settings.sim_episodes
    plan = [
        ("sim", sim_episodes, SIM_OBJECTS, settings.seed, 64, 64),
        (
            "proxy-real",
            settings.real_episodes,
            arm.world.object_set,
            arm.world.seed,
            arm.world.camera.width,
            arm.world.camera.height,
        ),
    ]
    jobs = []
    for domain, count, object_set, seed, width, height in plan:
        if count == 0:
            continue
        shards = max(1, min(settings.workers, count))
        for shard in range(shards):
            first = shard * count // shards
            jobs.append(
                ShardJob(
                    collection_id=f"experiment-{domain}",
                    shard=shard,
                    episodes=(shard + 1) * count // shards - first,
                    first_episode=first,
                    seed=seed,
                    max_steps=settings.max_steps,
                    domain=domain,
                    randomization="none",
                    object_set=object_set,
                    objects_per_bin=5,
                    policy="random",
                    epsilon=0.0,
                    model_label="",
                    width=width,
                    height=height,
                    render_masks=True,
                    render_canonical=False,
                    store_address=store_address,
                    planner_address="",
                    plan_timeout_s=5.0,
                    spool_dir=str(spool_dir),
                )
            )
    context = multiprocessing.get_context("spawn")
    progress, stop = context.Queue(), context.Event()
    waiting, running, collected, processes = list(jobs), 0, 0, []
    while waiting or running:
        while waiting and running < settings.workers:
            processes.append(
                context.Process(target=run_shard, args=(waiting.pop(0), progress, stop))
            )
            processes[-1].start()
            running += 1
        try:
            kind, collection, shard, detail, _, _ = progress.get(timeout=600)
        except queue.Empty:
            stop.set()
            raise RuntimeError("no episode for 10 minutes: the collection is stuck") from None
        if kind == "episode":
            collected += 1
            if collected % 100 == 0:
                log(f"collected {collected} episodes")
        elif kind == "failed":
            stop.set()
            raise RuntimeError(f"{collection} shard {shard} failed: {detail}")
        else:
            running -= 1
    for process in processes:
        process.join()


def link_store(source: Path, target: Path) -> None:
    """A store folder at `target` holding `source`'s episodes; `source` stays untouched.

    Shards are written once and never changed, so they are hard-linked (copied
    across file systems); the catalog is copied with SQLite's backup API, which
    is consistent even while another process writes it.
    """
    catalog = source / "episodes.sqlite"
    if not catalog.is_file():
        raise SystemExit(f"--sim-store {source}: no episodes.sqlite there; give a store folder")

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    target.mkdir(parents=True)
    if (source / "shards").is_dir():
        shutil.copytree(source / "shards", target / "shards", copy_function=link)
    with sqlite3.connect(catalog) as read, sqlite3.connect(target / "episodes.sqlite") as write:
        read.backup(write)


@dataclass(frozen=True)
class Data:
    """The experiment's episodes (summaries), every side labeled."""

    sim_train: list
    sim_held_out: list
    real_train: list
    real_validation: list


def split(stub, settings: Settings) -> Data:
    """Sim and proxy-real episodes, each split by object into training and held out.

    Raises:
        ObjectSplitError: shared objects link the sim or the proxy-real episodes
            into groups too big for the split (`samples.split_episodes`); there is
            no fallback to a split of the episodes themselves.
    """
    from graspfleet.v1 import common_pb2, episode_store_pb2
    from models.episodes.dataset import labeled
    from models.grasp_success.samples import split_episodes
    from services.episode_store import client

    def domain(value: int, object_set: str = "") -> list:
        found = client.list_all(
            stub, episode_store_pb2.EpisodeFilter(domain=value, object_set=object_set)
        )
        # By id, not ingest order (two shards write at once): the same seeds, the same split.
        return sorted(labeled(found), key=lambda e: e.episode_id)

    sim = domain(common_pb2.DOMAIN_SIM, SIM_OBJECTS)
    sim_train, sim_held_out = split_episodes(sim, 0.1, settings.seed)
    real = domain(common_pb2.DOMAIN_REAL)
    real_train, real_validation = split_episodes(
        real, settings.real_validation_fraction, settings.seed
    )
    data = Data(sim_train, sim_held_out, real_train, real_validation)
    for name in ("sim_train", "real_train", "real_validation"):
        labels = {e.label.success for e in getattr(data, name)}
        if labels != {True, False}:
            raise SystemExit(
                f"{name} holds {len(getattr(data, name))} episodes without both successes and "
                "failures; collect more (--sim-episodes, --real-episodes)"
            )
    return data


def counts(episodes: list) -> dict:
    successes = sum(e.label.success for e in episodes)
    return {
        "episodes": len(episodes),
        "steps": sum(e.num_steps for e in episodes),
        "success_rate": successes / max(1, len(episodes)),
    }


def train_generator(settings: Settings, data_root: str, data: Data, model_base: Path) -> dict:
    """GraspGAN without real labels (Table II); its generator exported; scene metrics."""
    from models.generators.graspgan_training import GraspGANSpec, train_graspgan
    from services.trainer.recipes import task_profile

    spec = GraspGANSpec(
        recipe="graspgan-experiment",
        profile=settings.refiner_profile,
        task_profile=task_profile(settings.refiner_profile),
        steps=settings.graspgan_steps,
        batch_size=settings.graspgan_batch,
        seed=settings.seed,
        real_labels=False,
        dbn=True,
        dann=True,
        log_every=max(1, settings.graspgan_steps // 10),
        image_every=0,
        shuffle_buffer=256,
    )
    started = time.perf_counter()
    result = train_graspgan(
        spec,
        data_root,
        data.sim_train + data.real_train,
        data.sim_held_out,
        model_base,
        progress_bar=False,
        on_progress=lambda step, total, m: log(f"GraspGAN step {step}/{total}"),
    )
    return {
        "generator": {"kind": "graspgan", "name": "graspgan", "version": int(result.path.name)},
        "scene": result.metrics,
        "steps_per_s": result.steps_per_s,
        "seconds": time.perf_counter() - started,
    }


def grasp_model(
    settings: Settings, recipe_value: int, seed: int, data_root: str, train, validation
) -> dict:
    """One grasp model of `recipe`'s regime, scored on the held-out proxy-real episodes.

    It trains a fixed number of steps and keeps the last weights: choosing a
    step by the proxy-real scores would let real labels into the sim-only rows.
    """
    from models.grasp_success import export, training
    from services.trainer import gate, recipes

    recipe = recipes.RECIPES[recipe_value]
    spec = training.TrainSpec(
        **recipes.train_spec_fields(recipe),
        steps=settings.grasp_steps,
        batch_size=settings.grasp_batch,
        seed=seed,
        scene_weight=settings.scene_weight,
        log_every=max(1, settings.grasp_steps // 10),
        shuffle_buffer=256,
    )
    started = time.perf_counter()
    result = training.train(spec, data_root, train, validation, None, progress_bar=False)
    # Scored as the gate scores it; the module must outlive the call (serve holds it weakly).
    serving = export.ServingModule(result.model)
    balanced, samples = gate.serving_accuracy(serving.serve, data_root, validation)
    return {
        "seed": seed,
        "accuracy": result.metrics.get("accuracy"),
        "balanced_accuracy": balanced,
        "auc": result.metrics.get("auc"),
        "samples": samples,
        "seconds": time.perf_counter() - started,
    }


SCORES = ("accuracy", "balanced_accuracy", "auc")


def summarize(recipe: str, trained_on: str, seeds: list[dict]) -> dict:
    """One row of grasp models: the per-seed scores, their mean and standard deviation."""
    row: dict = {"recipe": recipe, "trained_on": trained_on, "seeds": seeds}
    row["samples"] = seeds[0]["samples"]
    for score in SCORES:
        values = [s[score] for s in seeds if s[score] is not None]
        row[score] = float(np.mean(values)) if values else None
        row[f"{score}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return row


def mean_se(values: list[float]) -> dict:
    """Mean, standard error (None for one value) and count of independent values."""
    n = len(values)
    se = float(np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else None
    return {"mean": float(np.mean(values)), "se": se, "n": n}


def paired(raw: dict, refined: dict) -> dict:
    """Refined minus raw, seed by seed: mean, standard error and the per-seed differences."""
    result = {}
    for score in SCORES:
        differences = [
            b[score] - a[score]
            for a, b in zip(raw["seeds"], refined["seeds"], strict=True)
            if a[score] is not None and b[score] is not None
        ]
        if differences:
            result[score] = mean_se(differences) | {"per_seed": differences}
    return result


def images(data_root: str, episodes: list) -> np.ndarray:
    """Every step image (xt) of `episodes`, uint8 [N, H, W, 3]."""
    from models.episodes.dataset import XT, step_dataset

    batches = step_dataset(data_root, episodes).map(lambda s: s[XT]).batch(256)
    return np.concatenate(list(batches.as_numpy_iterator()))


def domain_classifier(
    sim: tuple[np.ndarray, np.ndarray], real: tuple[np.ndarray, np.ndarray], steps: int, seed: int
) -> dict:
    """Test accuracy of a small CNN told to separate sim (train, test) from real (train, test).

    Both classes are subsampled to the same size on each side, so 0.5 is chance.
    """
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def balanced(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = min(len(a), len(b))
        a, b = a[rng.permutation(len(a))[:size]], b[rng.permutation(len(b))[:size]]
        return np.concatenate([a, b]), np.concatenate([np.zeros(size), np.ones(size)])

    x_train, y_train = balanced(sim[0], real[0])
    x_test, y_test = balanced(sim[1], real[1])
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.Rescaling(1 / 127.5, offset=-1.0),
            keras.layers.Conv2D(16, 5, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True))
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=seed)
        .repeat()
        .batch(64)
    )
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    predicted = model.predict(x_test, batch_size=256, verbose=0)[:, 0] > 0
    return {
        "test_accuracy": float(np.mean(predicted == (y_test > 0.5))),
        "train_images": len(x_train),
        "test_images": len(x_test),
    }


def markdown(results: dict) -> str:
    def number(value, sd=None) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if sd is None else f"{value:.3f} ± {sd:.3f}"

    seeds = results["settings"]["grasp_seeds"]
    lines = [
        "| grasp model | trained on | accuracy | balanced accuracy | AUC | seeds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model in results["grasp_models"].values():
        scores = " | ".join(number(model[s], model[f"{s}_sd"]) for s in SCORES)
        lines.append(f"| {model['recipe']} | {model['trained_on']} | {scores} | {seeds} |")
    if results.get("refined_minus_raw"):
        lines += [
            "",
            "| refined minus raw, paired by seed | accuracy | balanced accuracy | AUC |",
            "|---|---:|---:|---:|",
        ]
        for pair, differences in results["refined_minus_raw"].items():
            cells = " | ".join(
                number(differences[s]["mean"], differences[s]["se"]) if s in differences else "-"
                for s in SCORES
            )
            lines.append(f"| {pair} | {cells} |")
    scene = results["graspgan"]["scene"]
    lines += [
        "",
        "| scene preservation (held-out sim) | value |",
        "|---|---:|",
        *(f"| {k} | {v:.3f} |" for k, v in sorted(scene.items())),
        "",
        "| domain classifier | test accuracy (0.5: cannot tell) |",
        "|---|---:|",
        *(
            f"| {name} sim vs real | {c['test_accuracy']:.3f} |"
            for name, c in results["domain_classifier"].items()
        ),
    ]
    return "\n".join(lines)


def run(settings: Settings, out: Path) -> dict:
    """The whole experiment in `out` (created); returns every number.

    results.json is rewritten after every stage, so a run stopped late keeps
    what it measured (its "finished" is false until the end).
    """
    from graspfleet.v1 import trainer_pb2
    from services.common.files import write_atomically
    from services.episode_store import client
    from services.episode_store.config import EpisodeStoreConfig
    from services.episode_store.server import create_server
    from services.trainer import recipes, refine_dataset

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=False)
    results: dict = {"settings": asdict(settings), "finished": False, "timings": {}}

    def stage(name: str, value) -> None:
        results[name] = value
        results["timings"][f"{name}_done_s"] = round(time.perf_counter() - started, 1)
        write_atomically(out / "results.json", json.dumps(results, indent=1, sort_keys=True))

    if settings.sim_store:
        log(f"linking the store {settings.sim_store}")
        link_store(Path(settings.sim_store), out / "store")
    store = create_server(EpisodeStoreConfig(port=0, data_dir=str(out / "store"), grace_s=0))
    data_root = store.config.data_dir
    try:
        sim = "no" if settings.sim_store else str(settings.sim_episodes)
        log(f"collecting {sim} sim and {settings.real_episodes} proxy-real episodes")
        collect(settings, store.address, out / "spool")
        channel, stub = client.connect(store.address)
        with channel:
            data = split(stub, settings)
    finally:
        store.stop(grace_s=0)
    stage("data", {name: counts(getattr(data, name)) for name in Data.__dataclass_fields__})
    log(f"training GraspGAN ({settings.graspgan_steps} steps)")
    graspgan = train_generator(settings, data_root, data, out / "models")
    generate = refine_dataset.load_generator(out / "models", graspgan["generator"])
    refined = refine_dataset.refine_episodes(generate, data_root, data.sim_train, out / "refined")
    stage("graspgan", {**graspgan, "refinement": refined.metadata()})
    refined_sim = refined.episodes
    R = trainer_pb2
    runs = {
        "sim_only": (R.RECIPE_SIM_ONLY, "raw sim", data.sim_train),
        "graspgan_sim_only": (R.RECIPE_GRASPGAN_SIM_ONLY, "refined sim", refined_sim),
    }
    if settings.dann:
        runs["dann"] = (R.RECIPE_DANN, "raw sim + labeled real", data.sim_train + data.real_train)
        runs["graspgan_dann_dbn"] = (
            R.RECIPE_GRASPGAN_DANN_DBN,
            "refined sim + labeled real",
            refined_sim + data.real_train,
        )
    models: dict = {}
    for key, (recipe, trained_on, train) in runs.items():
        trained = []
        for seed in range(settings.seed, settings.seed + settings.grasp_seeds):
            log(f"training the grasp model {key} on {trained_on}, seed {seed}")
            trained.append(
                grasp_model(settings, recipe, seed, data_root, train, data.real_validation)
            )
            models[key] = summarize(recipes.RECIPES[recipe].name, trained_on, trained)
            stage("grasp_models", models)
    pairs = {"graspgan_sim_only - sim_only": ("sim_only", "graspgan_sim_only")}
    if settings.dann:
        pairs["graspgan_dann_dbn - dann"] = ("dann", "graspgan_dann_dbn")
    stage("refined_minus_raw", {k: paired(models[a], models[b]) for k, (a, b) in pairs.items()})
    log("training the domain classifiers")
    half = min(len(data.sim_train) // 2, settings.classifier_episodes)
    real = (images(data_root, data.real_train), images(data_root, data.real_validation))
    classifiers: dict = {}
    for name, sim in (("raw", data.sim_train), ("refined", refined_sim)):
        pair = (images(data_root, sim[:half]), images(data_root, sim[half : 2 * half]))
        classifiers[name] = domain_classifier(pair, real, settings.classifier_steps, settings.seed)
    results["finished"] = True
    results["timings"]["total_s"] = round(time.perf_counter() - started, 1)
    stage("domain_classifier", classifiers)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.graspgan_experiment", description=__doc__.splitlines()[0]
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    parser.add_argument("--out", default=f"var/graspgan-experiment/{stamp}", help="a new folder")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    for item in fields(Settings):
        flag = "--" + item.name.replace("_", "-")
        if item.type == "bool":
            parser.add_argument(flag, action="store_true", help=f"default {item.default}")
        else:
            kind = {"int": int, "float": float, "str": str}[item.type]
            parser.add_argument(flag, type=kind, help=f"default {item.default}")
    args = parser.parse_args(argv)
    settings = replace(Settings(), **QUICK) if args.quick else Settings()
    given = {f.name: getattr(args, f.name) for f in fields(Settings)}
    # Store-true flags are False when absent; every other flag is None when absent.
    settings = replace(
        settings, **{k: v for k, v in given.items() if v is not None and v is not False}
    )
    out = Path(args.out)
    results = run(settings, out)
    table = markdown(results)
    (out / "results.md").write_text(table + "\n")
    print(table)
    log(f"done in {results['timings']['total_s']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
