"""The table's models: generators, refined data sets and one grasp model per row and seed.

Every grasp model is trained by `models.grasp_success.training.train`, the
function the trainer's jobs run; GraspGAN and RCAN generators by the refiner's
own training functions; refined data sets by the trainer's bulk refinement.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.sim2real.data import Data
from experiments.sim2real.protocol import Row, Settings
from experiments.sim2real.stages import Stages, log
from graspfleet.v1 import episode_store_pb2
from models.grasp_success.training import TrainSpec, train
from models.registry import METADATA_FILE
from services.trainer.job.refine_dataset import load_generator, refine_episodes

Summary = episode_store_pb2.EpisodeSummary
BATCH_SIZE = 32


class Models:
    """Trains what the table needs, each piece once (cached by its settings).

    Args:
        settings: The protocol.
        root: The experiment's folder.
        stages: The stage cache.
        data: The collected episodes.
    """

    def __init__(self, settings: Settings, root: Path, stages: Stages, data: Data) -> None:
        self.settings = settings
        self.root = root
        self.stages = stages
        self.data = data
        self.data_root = str(data.data_root)

    # -- generators ------------------------------------------------------------------

    def graspgan(self, budget: str, seed: int) -> dict:
        """A GraspGAN generator.

        Table II's learns from unlabeled real images (all of them), Table III's from the
        labeled real episodes of the row's budget.
        """
        from models.generators.graspgan_training import GraspGANSpec, train_graspgan

        real = self.data.real_all if budget in ("none", "all") else self.data.real_low
        spec = GraspGANSpec(
            recipe="graspgan-sim-only" if budget == "none" else "graspgan",
            steps=self.settings.generator_steps,
            seed=seed,
            real_labels=budget != "none",
            dbn=True,
            dann=True,
            image_every=0,
            checkpoint_every=0,
        )
        name = f"graspgan-{budget}-g{seed}"
        base = self.root / "generators" / name

        def work() -> dict:
            result = train_graspgan(
                spec,
                self.data_root,
                [*self.data.sim, *real],
                self.data.sim_validation,
                base,
                progress_bar=False,
            )
            return {"path": str(result.path), "metrics": result.metrics}

        settings = {"spec": repr(spec), "data": self._data_key(real), "v": 1}
        return self.stages.run(f"generator-{name}", settings, work)

    def rcan(self) -> dict:
        """The RCAN generator: randomized sim images to canonical renders."""
        from models.generators.rcan_training import RCANSpec, train_rcan

        spec = RCANSpec(steps=self.settings.generator_steps, seed=0, image_every=0)
        base = self.root / "generators" / "rcan"

        def work() -> dict:
            result = train_rcan(spec, self.data_root, self.data.randomized, [], base)
            return {"path": str(result.path), "metrics": result.metrics}

        settings = {"spec": repr(spec), "data": self._data_key(self.data.randomized), "v": 1}
        return self.stages.run("generator-rcan", settings, work)

    def refined(self, generator: dict, episodes: list[Summary], name: str) -> list[Summary]:
        """`episodes` through a generator, rewritten once (cached), as summaries."""
        out = self.root / "refined" / name

        def work() -> dict:
            path = Path(generator["path"])
            kind = json.loads((path / METADATA_FILE).read_text())["kind"]
            ref = {"kind": kind, "name": path.parent.name, "version": int(path.name)}
            log(f"  refining {len(episodes)} episodes with {path}")
            rewritten = refine_episodes(
                load_generator(path.parent.parent, ref), self.data_root, episodes, out
            )
            return {"shards": {e.episode_id: e.shard for e in rewritten.episodes}}

        settings = {"generator": generator["path"], "episodes": self._data_key(episodes)}
        shards = self.stages.run(f"refined-{name}", settings, work)["shards"]
        return [_with_shard(e, shards[e.episode_id]) for e in episodes]

    # -- grasp models ----------------------------------------------------------------

    def sim_data(self, row: Row, seed: int) -> tuple[list[Summary], list[Summary]]:
        """(simulated training episodes, their validation) as the row's model sees them."""
        d = self.data
        if row.sim == "none":
            return [], []
        if row.sim == "plain":
            return d.sim, d.sim_validation
        if row.sim == "randomized":
            return d.randomized, d.sim_validation
        if row.sim == "graspgan":
            generator = self.graspgan(row.budget, seed)
            tag = Path(generator["path"]).parent.parent.name
            return (
                self.refined(generator, d.sim, f"{tag}-sim"),
                self.refined(generator, d.sim_validation, f"{tag}-sim-validation"),
            )
        generator = self.rcan()
        return (
            self.refined(generator, d.randomized, "rcan-randomized"),
            self.refined(generator, d.sim_validation, "rcan-sim-validation"),
        )

    def real_data(self, row: Row) -> tuple[list[Summary], list[Summary]]:
        """(real training episodes, real validation) as the row's model sees them."""
        if not row.uses_real_labels:
            return [], []
        real = self.data.real_all if row.budget == "all" else self.data.real_low
        if row.sim != "rcan":
            return real, self.data.real_validation
        generator = self.rcan()  # RCAN's grasp model only ever sees canonical images
        return (
            self.refined(generator, real, f"rcan-real-{row.budget}"),
            self.refined(generator, self.data.real_validation, "rcan-real-validation"),
        )

    def spec(self, row: Row, seed: int) -> TrainSpec:
        """The training settings of `row`'s grasp model for `seed`."""
        s = self.settings
        # A fine-tune keeps its parent's network (scene head included) to load its weights;
        # on real samples alone the scene loss counts nothing.
        has_sim = row.sim != "none"
        if row.finetune:
            sim_fraction = 0.0
        elif not row.uses_real_labels:
            sim_fraction = 1.0
        elif row.sim == "none":
            sim_fraction = 0.0
        else:
            sim_fraction = 0.5
        return TrainSpec(
            recipe=f"sim2real:{row.name}",
            steps=s.grasp_steps,
            batch_size=BATCH_SIZE,
            seed=seed,
            dbn=row.dbn,
            dann=row.dann,
            scene_weight=s.scene_weight if has_sim else 0.0,
            sim_fraction=sim_fraction,
            eval_every=s.eval_every,
            keep_best=True,
        )

    def grasp_model(self, row: Row, seed: int) -> dict:
        """The row's grasp model for `seed`: {"path", "metrics", ...}."""
        spec = self.spec(row, seed)
        name = f"{row.name}-s{seed}"
        base = self.root / "models" / name

        def work() -> dict:
            sim, sim_validation = self.sim_data(row, seed)
            real, real_validation = self.real_data(row)
            initial = None
            if row.finetune:
                parent = self.grasp_model(_row(row.finetune), seed)
                initial = parent["weights"]
                sim = []  # fine-tuning: the real budget alone, from the zero-shot weights
            train_set = [*sim, *real]
            validation = real_validation if row.uses_real_labels else sim_validation
            result = train(
                spec,
                self.data_root,
                train_set,
                validation,
                base,
                progress_bar=False,
                initial_weights=initial,
            )
            weights = base / f"{name}.weights.h5"
            result.model.save_weights(str(weights))
            return {
                "path": str(result.path),
                "weights": str(weights),
                "metrics": result.metrics,
                "train_episodes": len(train_set),
                "validation_episodes": len(validation),
                "steps_per_s": result.steps_per_s,
            }

        settings = {"spec": repr(spec), "row": repr(row), "data": self._row_key(row), "v": 1}
        return self.stages.run(f"grasp-{name}", settings, work)

    def _row_key(self, row: Row) -> str:
        """The identity of the data a row draws from (not of data it does not use)."""
        d = self.data
        sim = {"plain": d.sim, "graspgan": d.sim, "randomized": d.randomized, "rcan": d.randomized}
        real = {"none": [], "low": d.real_low, "all": d.real_all}[row.budget]
        parts = [sim.get(row.sim, []), d.sim_validation, real]
        if row.uses_real_labels or row.sim == "graspgan":
            parts.append(d.real_validation)
        return "|".join(self._data_key(p) for p in parts)

    @staticmethod
    def _data_key(episodes: list[Summary]) -> str:
        return json.dumps([len(episodes), episodes[0].episode_id if episodes else ""])


def _with_shard(summary: Summary, shard: str) -> Summary:
    copy = Summary()
    copy.CopyFrom(summary)
    copy.shard = shard
    return copy


def _row(name: str) -> Row:
    from experiments.sim2real.protocol import table_rows

    return next(r for r in table_rows() if r.name == name)
