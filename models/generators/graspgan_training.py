"""Training GraspGAN from episode-store data and publishing its generator.

`train_graspgan` is the whole job, shaped like the grasp model's
`training.train`: sim episodes (with masks and labels) and real episodes
(labeled or not) from the store, the alternating G / D+C loop, TensorBoard
scalars and image grids (sim | refined | mask | real), optional checkpoints to
resume a killed run, scene-preservation metrics on held-out sim episodes, and
the export of G as the next version of `<model_base>/<name>/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from graspfleet.v1 import episode_store_pb2
from models.episodes.dataset import XT, image_size
from models.generators import data, export
from models.generators.graspgan import GraspGANConfig, GraspGANModels, GraspGANStep, build_models
from models.generators.loop import GeneratorRun, LoopSettings, ProgressHook, run_loop, run_metadata
from models.generators.networks import profile_configs
from models.generators.scores import scene_metrics
from models.generators.summaries import Checkpoints, TrainingLog, colorize_masks, image_grid
from models.grasp_success import profiles
from models.grasp_success.model import ModelConfig
from services.common.config import check_ranges

Summary = episode_store_pb2.EpisodeSummary


@dataclass(frozen=True)
class GraspGANSpec:
    """One GraspGAN training run.

    Attributes:
        recipe: Name recorded with the model ("graspgan", "graspgan-sim-only", ...).
        profile: Refiner network profile: tiny, default (64x64 on CPU) or paper.
        task_profile: Grasp-model profile of C (`grasp_predictor.profiles`).
        steps: Alternating steps (each one D+C update and one G update).
        batch_size: Sim pairs and real pairs per step (each).
        generator_lr: Adam learning rate of G.
        discriminator_lr: Adam learning rate of D.
        task_lr: Adam learning rate of C.
        beta_1: Adam's β1 for G and D.
        seed: Seeds weights, data order and crops.
        real_labels: C's task loss also uses labeled real samples (Table III);
            False trains on real images without their labels (Table II).
        dbn: C uses domain-specific batch norm.
        dann: C has a DANN head on its last conv layer.
        dann_weight: Factor of the reversed domain gradient in C.
        positive_fraction: Share of successful samples per stream.
        losses: The λ weights of equations (1) and (2) and the content terms.
        log_every: Steps per averaged metrics window.
        image_every: Steps between TensorBoard image grids (0 for none).
        checkpoint_every: Steps between checkpoints when a checkpoint folder is given.
        shuffle_buffer: Steps shuffled together per stream.
        validation_batch_size: Pairs per batch when scoring scene preservation.
    """

    recipe: str = "graspgan"
    profile: str = "default"
    task_profile: str = "default"
    steps: int = 2000
    batch_size: int = 16
    generator_lr: float = 2e-4
    discriminator_lr: float = 2e-4
    task_lr: float = 1e-3
    beta_1: float = 0.5
    seed: int = 0
    real_labels: bool = True
    dbn: bool = False
    dann: bool = False
    dann_weight: float = 0.1
    positive_fraction: float = 0.5
    losses: GraspGANConfig = field(default_factory=GraspGANConfig)
    log_every: int = 10
    image_every: int = 200
    checkpoint_every: int = 200
    shuffle_buffer: int = 1024
    validation_batch_size: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.losses, dict):  # from a job file's JSON
            object.__setattr__(self, "losses", GraspGANConfig(**self.losses))
        profile_configs(self.profile)
        profiles.profile(self.task_profile)
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 2,
            "generator_lr": self.generator_lr > 0,
            "discriminator_lr": self.discriminator_lr > 0,
            "task_lr": self.task_lr > 0,
            "beta_1": 0.0 <= self.beta_1 < 1.0,
            "dann_weight": self.dann_weight >= 0,
            "positive_fraction": 0.0 < self.positive_fraction < 1.0,
            "log_every": self.log_every >= 1,
            "image_every": self.image_every >= 0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "shuffle_buffer": self.shuffle_buffer >= 1,
            "validation_batch_size": self.validation_batch_size >= 1,
        }
        check_ranges(self, checks)

    @property
    def task_config(self) -> ModelConfig:
        """C's network."""
        return ModelConfig(self.task_profile, self.dbn, self.dann, self.dann_weight)

    def build_models(self) -> GraspGANModels:
        """Fresh G, D, C and optimizers for this spec (seeded)."""
        keras.utils.set_random_seed(self.seed)
        generator, discriminator = profile_configs(self.profile)
        return build_models(
            generator,
            discriminator,
            self.task_config,
            generator_lr=self.generator_lr,
            discriminator_lr=self.discriminator_lr,
            task_lr=self.task_lr,
            beta_1=self.beta_1,
        )


GraspGANResult = GeneratorRun[GraspGANModels]


def fit_graspgan(
    models: GraspGANModels,
    spec: GraspGANSpec,
    sim_batches: tf.data.Dataset,
    real_batches: tf.data.Dataset,
    *,
    log_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    on_progress: ProgressHook | None = None,
    progress_bar: bool = True,
) -> tuple[dict[str, float], float]:
    """Runs the alternating GraspGAN loop over endless sim and real batches.

    Args:
        models: Built G, D, C and optimizers; trained in place.
        spec: Steps, loss weights, cadence.
        sim_batches: {x0, xt, x0_mask, mask, motion, label, domain} (`data.sim_batches`).
        real_batches: {x0, xt, motion} and, with spec.real_labels, {label, domain}.
        log_dir: TensorBoard logs; None for none.
        checkpoint_dir: Resume from and save checkpoints here; None for none.
        on_progress: Called as (step, total, metrics) per logging window.
        progress_bar: Show a tqdm bar.

    Returns:
        (losses of the last logging window, steady-state steps per second).
    """
    step_fn = GraspGANStep(models, spec.losses, spec.real_labels)
    sims, reals = iter(sim_batches), iter(real_batches)
    log = TrainingLog(log_dir)
    preview_sim, preview_real = next(sims), next(reals)

    def images(step: int) -> None:
        shown = preview_sim[XT][:4]
        refined, logits = models.generator(data.to_float(shown))
        grid = image_grid(
            [
                shown,
                export.to_uint8(refined),
                colorize_masks(tf.argmax(logits, axis=-1)),
                preview_real[XT][: tf.shape(shown)[0]],
            ]
        )
        log.images(step, "sim | refined | mask | real", grid)

    checkpoints = Checkpoints(
        checkpoint_dir,
        generator=models.generator,
        discriminator=models.discriminator,
        task_model=models.task_model,
        generator_optimizer=models.generator_optimizer,
        discriminator_optimizer=models.discriminator_optimizer,
        task_optimizer=models.task_optimizer,
    )
    settings = LoopSettings(
        spec.recipe,
        spec.steps,
        spec.log_every,
        spec.image_every,
        spec.checkpoint_every,
        progress_bar,
    )
    return run_loop(
        settings,
        lambda step: step_fn(next(sims), next(reals), step),
        images_fn=images,
        log=log,
        checkpoints=checkpoints,
        on_progress=on_progress,
    )


def train_graspgan(
    spec: GraspGANSpec,
    data_root: str | Path,
    train_episodes: Sequence[Summary],
    validation_episodes: Sequence[Summary],
    model_base: str | Path | None,
    *,
    name: str = export.DEFAULT_NAMES[export.KIND_GRASPGAN],
    log_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    on_progress: ProgressHook | None = None,
    progress_bar: bool = True,
    data_selection: dict | None = None,
) -> GraspGANResult:
    """Trains GraspGAN on store episodes and publishes G as the next version of `name`.

    Args:
        spec: The run's settings.
        data_root: The episode store's data folder (holding `shards/`).
        train_episodes: SIM episodes (labeled, with masks) and REAL episodes
            (labeled when spec.real_labels; unlabeled ones are used only without).
        validation_episodes: Held-out episodes; their SIM ones score scene
            preservation (`scores.scene_metrics`). May be empty.
        model_base: Model repository; None trains without exporting.
        name: Model name under model_base.
        log_dir: TensorBoard log folder; None for no logs.
        checkpoint_dir: Checkpoints to resume a killed run from; None for none.
        on_progress: Progress hook (step, total, metrics).
        progress_bar: Show a tqdm bar.
        data_selection: How the episodes were chosen, for the metadata.

    Raises:
        ValueError: missing SIM or REAL data, several image sizes, or images
            smaller than C's crop.
    """
    height, width = image_size(train_episodes)
    crop = profiles.profile(spec.task_profile).crop_size
    if crop > min(height, width):
        raise ValueError(
            f"{width}x{height} episodes are smaller than C's {crop}px crop "
            f"(task_profile {spec.task_profile!r})"
        )
    models = spec.build_models()
    common = {
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "positive_fraction": spec.positive_fraction,
        "shuffle_buffer": spec.shuffle_buffer,
    }
    sim = data.sim_batches(data_root, train_episodes, **common)
    real = data.real_batches(data_root, train_episodes, with_labels=spec.real_labels, **common)
    train_metrics, steps_per_s = fit_graspgan(
        models,
        spec,
        sim,
        real,
        log_dir=log_dir,
        checkpoint_dir=checkpoint_dir,
        on_progress=on_progress,
        progress_bar=progress_bar,
    )
    metrics: dict[str, float] = {}
    if any(e.domain == data.SIM for e in validation_episodes):
        batches = data.mask_batches(
            data_root, validation_episodes, batch_size=spec.validation_batch_size
        )
        metrics = scene_metrics(models.generator, batches)
        TrainingLog(log_dir).scalars(spec.steps, metrics, part="validation")
    metadata = {
        **run_metadata(
            spec,
            data_selection,
            train_episodes,
            validation_episodes,
            steps_per_s,
            train_metrics,
            metrics,
        ),
        "discriminator": asdict(models.discriminator.discriminator_config),
        "task_model": asdict(spec.task_config),
    }
    path = None
    if model_base is not None:
        path = export.export_generator(
            models.generator, model_base, name, export.KIND_GRASPGAN, (height, width), metadata
        )
    return GraspGANResult(models, metrics, train_metrics, steps_per_s, metadata, path)
