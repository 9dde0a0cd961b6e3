"""The trainer's settings."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from graspfleet.v1 import trainer_pb2
from services.common.config import (
    ConfigError,
    ServerConfig,
    check_address,
    check_job_settings,
    setting,
)
from services.trainer import recipes

BACKENDS = ("local", "kubernetes")
# An optional DNS-subdomain prefix and a name, as Kubernetes label keys (and taint keys) are.
_TAINT_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
TAINT_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class TrainerConfig(ServerConfig):
    """Trainer: retraining runs, recipes, the model registry, the validation gate and rollout."""

    port: int = setting(50056, "gRPC port; 0 picks a free one (see port_file).")
    state_dir: str = setting(
        "var/trainer", "Folder of the run database (SQLite, WAL) and, by default, the run folders."
    )
    runs_dir: str = setting(
        "",
        "Folder of the per-run folders jobs read their inputs from and report into; "
        "<state_dir>/runs when empty. Kubernetes Jobs must see it at the same path.",
    )
    store_address: str = setting("", "episode-store host:port.", required=True)
    store_data_dir: str = setting(
        "", "The episode store's data folder (its shards), as jobs see it.", required=True
    )
    sim_farm_address: str = setting(
        "",
        "sim-farm host:port that evaluation runs (RECIPE_EVALUATION) play their episodes on; "
        "their jobs and the trainer (stopping a cancelled evaluation) call it. Empty: "
        "evaluations are refused.",
    )
    model_base: str = setting("var/models", "Model repository: <model_base>/<name>/<version>/.")
    default_model_name: str = setting("grasp_success", "Model name when a request names none.")
    graspgan_model_name: str = setting(
        "graspgan", "Model name of the GraspGAN generator (RECIPE_GRASPGAN_* use its stable)."
    )
    rcan_model_name: str = setting(
        "rcan", "Model name of the RCAN generator (RECIPE_RCAN uses its stable)."
    )
    rcan_grasp_model_name: str = setting(
        "grasp_success_rcan",
        "Model name RECIPE_RCAN publishes to when a request names none: the grasp model on "
        "canonical images, which RCAN agents ask for (--canonicalize --model-name).",
    )
    auth_token: str = setting(
        "",
        "Bearer token mutating calls must send; empty disables authentication (logged loudly).",
    )
    default_backend: str = setting("local", "Job backend when a RunSpec names none.")
    max_concurrent_runs: int = setting(1, "Runs training at once; later ones stay QUEUED.")
    poll_interval_s: float = setting(1.0, "How often jobs' progress and liveness are checked, s.")
    watch_interval_s: float = setting(0.25, "How often WatchRun looks for changes, s.")
    max_watchers: int = setting(
        4,
        "WatchRun streams open at once (each holds a server thread while its run goes on); "
        "more get RESOURCE_EXHAUSTED. Below max_workers, so the other calls find a thread.",
    )
    cancel_grace_s: float = setting(
        10.0, "After SIGTERM, seconds a cancelled local job gets before SIGKILL."
    )
    default_steps: int = setting(1000, "Training steps when a RunSpec sets none.")
    default_batch_size: int = setting(32, "Batch size when a RunSpec sets none.")
    default_learning_rate: float = setting(1e-3, "Learning rate when a RunSpec sets none.")
    default_generator_learning_rate: float = setting(
        2e-4, "Learning rate of the generator recipes (G and D) when a RunSpec sets none."
    )
    default_validation_fraction: float = setting(
        0.2, "Share of matching real episodes held out for validation and the gate."
    )
    max_steps: int = setting(2_000_000, "Most training steps a RunSpec may ask for.")
    max_batch_size: int = setting(4096, "Largest batch size a RunSpec may ask for.")
    gate_max_regression: float = setting(
        0.02,
        "Default gate: largest drop in held-out real accuracy against stable that still publishes.",
    )
    generator_min_mask_accuracy: float = setting(
        0.9,
        "Generator gate: least share of held-out sim pixels whose class (background, tray, "
        "arm, object) G's mask gets right.",
    )
    generator_min_mask_iou: float = setting(
        0.3,
        "Generator gate: least IoU of G's arm mask and of its object mask with the sim masks "
        "(the arm and objects must stay where they are).",
    )
    rollout_interval_s: float = setting(
        30.0, "How often canaries are checked for automatic promotion, s; 0 disables it."
    )
    rollout_min_grasps: int = setting(
        200,
        "Labeled real grasps the canary, and stable over the same period, need before the "
        "rollout decides anything.",
    )
    rollout_max_grasps: int = setting(
        2000,
        "Canary grasps after which a canary not shown not worse is rolled back (the maximum "
        "wait, in attempts).",
    )
    rollout_max_wait_s: float = setting(
        86400.0,
        "Seconds after which a canary not shown not worse is rolled back (the maximum wait, "
        "in time).",
    )
    rollout_margin: float = setting(
        0.05,
        "Non-inferiority margin: promote when the canary's success rate is shown above "
        "stable's minus this.",
    )
    rollout_confidence: float = setting(
        0.95,
        "Posterior probability a rollout decision needs: that the canary is not worse by more "
        "than the margin (promote), or that it is worse (roll back).",
    )
    auto_retrain_enabled: bool = setting(
        False,
        "Submit a run after every auto_retrain_episodes new labeled real episodes, while a "
        "stable version exists and no canary is under test.",
    )
    auto_retrain_episodes: int = setting(500, "New labeled real episodes that trigger a run.")
    auto_retrain_min_episodes: int = setting(
        0,
        "Labeled real episodes the store must hold before any automatic run (a few hundred "
        "teach no recipe anything: docs/results.md); 0 for no minimum.",
    )
    auto_retrain_recipe: str = setting(
        "REAL_ONLY",
        "Recipe of automatic runs (a Recipe name, e.g. DANN), or a schedule by the labeled "
        'real episodes in the store: "REAL_ONLY,2000:NAIVE_MIX" runs NAIVE_MIX from 2000.',
    )
    auto_retrain_steps: int = setting(0, "Steps of automatic runs; 0 uses default_steps.")
    auto_retrain_spec_file: str = setting(
        "",
        "A RunSpec in protobuf JSON that automatic runs start from (data selection, params, "
        "gate, backend); the schedule sets its recipe, auto_retrain_steps its steps when set.",
    )
    auto_retrain_interval_s: float = setting(60.0, "How often the store is asked for new data, s.")
    k8s_namespace: str = setting("graspfleet", "Namespace of training Jobs.")
    k8s_image: str = setting("graspfleet:latest", "Container image of training Jobs.")
    k8s_command: tuple[str, ...] = setting(
        ("python", "-m", "services.cli"),
        "Command of the Job's container before the job's own words (comma-separated).",
    )
    k8s_service_account: str = setting("graspfleet-trainer-job", "Service account of Job pods.")
    k8s_cpu: str = setting("2", "CPU request (and limit) of a Job pod.")
    k8s_memory: str = setting("8Gi", "Memory request (and limit) of a Job pod.")
    k8s_gpus: int = setting(0, "nvidia.com/gpu limit of a Job pod; 0 for none.")
    k8s_volumes: tuple[str, ...] = setting(
        (),
        "Volumes of Job pods, comma-separated claim=/mount/path pairs: the store's shards, the "
        "model base and runs_dir must be visible at the trainer's paths.",
    )
    k8s_node_selector: tuple[str, ...] = setting((), "key=value pairs pods must be scheduled by.")
    k8s_tolerations: tuple[str, ...] = setting(
        (),
        "Tolerations of Job pods, comma-separated key[=value]:effect as in kubectl taint "
        "(e.g. nvidia.com/gpu:NoSchedule for tainted GPU nodes); no value means any value.",
    )
    k8s_tls_secret: str = setting(
        "",
        "Secret with the CA certificate (ca.crt) mounted into Job pods at "
        "/etc/graspfleet/tls, with GRASPFLEET_TLS_CA pointing at it: evaluation Jobs call the "
        "sim-farm and the store, which speak TLS when the tls component is on. Empty: none.",
    )
    k8s_ttl_s: int = setting(86400, "Seconds a finished Job is kept before Kubernetes deletes it.")
    k8s_deadline_s: int = setting(
        86400, "activeDeadlineSeconds of a Job (the admission policy requires one); 0 for none."
    )
    k8s_api: str = setting(
        "auto", "How to reach the API server: auto, in-cluster, kubeconfig, or off."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.max_watchers < self.max_workers:
            raise ConfigError(
                f"max_watchers={self.max_watchers} must be at least 1 and below "
                f"max_workers={self.max_workers}, or watchers could take every thread"
            )
        check_address("store_address", self.store_address)
        if self.sim_farm_address:
            check_address("sim_farm_address", self.sim_farm_address)
        for name in ("state_dir", "store_data_dir", "model_base"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required")
        if self.default_backend not in BACKENDS:
            raise ConfigError(f"default_backend={self.default_backend!r}: use one of {BACKENDS}")
        self._check_training()
        self._check_model_names()
        self._check_gate_and_rollout()
        self._check_jobs()

    def _check_training(self) -> None:
        """Sizes, rates, intervals and fractions of runs and their schedule."""
        positive = (
            "max_concurrent_runs",
            "default_steps",
            "default_batch_size",
            "max_steps",
            "max_batch_size",
            "rollout_min_grasps",
            "rollout_max_grasps",
            "auto_retrain_episodes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.default_batch_size < 2:
            raise ConfigError("default_batch_size must be at least 2 (batch norm)")
        for name in ("poll_interval_s", "watch_interval_s", "auto_retrain_interval_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.auto_retrain_min_episodes < 0:
            raise ConfigError(
                f"auto_retrain_min_episodes={self.auto_retrain_min_episodes} must not be negative"
            )
        if self.cancel_grace_s < 0 or self.rollout_interval_s < 0:
            raise ConfigError("cancel_grace_s and rollout_interval_s must not be negative")
        for name in ("default_learning_rate", "default_generator_learning_rate"):
            rate = getattr(self, name)
            if not (0 < rate <= 1 and math.isfinite(rate)):
                raise ConfigError(f"{name}={rate} is not in (0, 1]")
        for name in ("generator_min_mask_accuracy", "generator_min_mask_iou"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1]")
        try:
            recipes.schedule(self.auto_retrain_recipe)
        except ValueError as err:
            raise ConfigError(f"auto_retrain_recipe: {err}") from None
        if self.auto_retrain_spec_file:
            self.auto_retrain_template()

    def _check_model_names(self) -> None:
        """The four models the trainer publishes have four different names."""
        names = (
            self.default_model_name,
            self.graspgan_model_name,
            self.rcan_model_name,
            self.rcan_grasp_model_name,
        )
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(
                "default_model_name, graspgan_model_name, rcan_model_name and "
                f"rcan_grasp_model_name must be four different names (got {names})"
            )

    def _check_gate_and_rollout(self) -> None:
        """The gate's and the rollout's thresholds."""
        if not 0 < self.default_validation_fraction < 1:
            raise ConfigError("default_validation_fraction must be between 0 and 1")
        if not -1 <= self.gate_max_regression <= 1:
            raise ConfigError(f"gate_max_regression={self.gate_max_regression} must be in [-1, 1]")
        if not 0 <= self.rollout_margin < 1:
            raise ConfigError(f"rollout_margin={self.rollout_margin} must be in [0, 1)")
        if not 0.5 < self.rollout_confidence < 1:
            raise ConfigError(f"rollout_confidence={self.rollout_confidence} must be in (0.5, 1)")
        if self.rollout_max_grasps < self.rollout_min_grasps or not self.rollout_max_wait_s > 0:
            raise ConfigError(
                f"rollout_max_grasps={self.rollout_max_grasps} must be at least "
                f"rollout_min_grasps={self.rollout_min_grasps}, and rollout_max_wait_s positive"
            )

    def _check_jobs(self) -> None:
        """The Jobs' settings: shared with the sim-farm's, then the trainer's own."""
        if self.auto_retrain_steps < 0 or self.k8s_gpus < 0:
            raise ConfigError("auto_retrain_steps and k8s_gpus must be >= 0")
        check_job_settings(self, "`train job`")
        for name in ("k8s_volumes", "k8s_node_selector"):
            for pair in getattr(self, name):
                key, sep, value = pair.partition("=")
                if not sep or not key or not value:
                    raise ConfigError(f"{name}: {pair!r} is not key=value")
        for entry in self.k8s_tolerations:
            try:
                parse_toleration(entry)
            except ValueError as err:
                raise ConfigError(f"k8s_tolerations: {err}") from None

    def auto_retrain_template(self) -> trainer_pb2.RunSpec:
        """The RunSpec automatic runs start from (empty without auto_retrain_spec_file).

        Raises:
            ConfigError: the file is missing or is not a RunSpec in protobuf JSON.
        """
        spec = trainer_pb2.RunSpec()
        if not self.auto_retrain_spec_file:
            return spec
        path = Path(self.auto_retrain_spec_file)
        try:
            json_format.Parse(path.read_text(), spec)
        except (OSError, json_format.ParseError) as err:
            raise ConfigError(f"auto_retrain_spec_file={path}: {err}") from None
        if spec.HasField("evaluation"):
            raise ConfigError(f"auto_retrain_spec_file={path}: an automatic run trains a model")
        return spec

    @property
    def runs_path(self) -> Path:
        """The folder holding one folder per run."""
        return Path(self.runs_dir) if self.runs_dir else Path(self.state_dir) / "runs"

    @property
    def volumes(self) -> dict[str, str]:
        """k8s_volumes as claim name -> mount path."""
        return dict(pair.split("=", 1) for pair in self.k8s_volumes)

    @property
    def node_selector(self) -> dict[str, str]:
        """k8s_node_selector as a mapping."""
        return dict(pair.split("=", 1) for pair in self.k8s_node_selector)

    @property
    def tolerations(self) -> list[Toleration]:
        """k8s_tolerations, parsed."""
        return [parse_toleration(entry) for entry in self.k8s_tolerations]

    def generator_model_name(self, kind: str) -> str:
        """The model folder of a generator kind ("graspgan" or "rcan")."""
        return self.graspgan_model_name if kind == recipes.GRASPGAN else self.rcan_model_name


@dataclass(frozen=True)
class Toleration:
    """One pod toleration.

    An empty `value` means any value (operator Exists); an empty `effect` means every effect.
    """

    key: str
    value: str
    effect: str


def parse_toleration(entry: str) -> Toleration:
    """`key[=value][:effect]`, the syntax of `kubectl taint`.

    Raises:
        ValueError: no key, an effect Kubernetes does not know, or a malformed key.
    """
    rest, _, effect = entry.partition(":")
    key, _, value = rest.partition("=")
    if not _TAINT_KEY.match(key):
        raise ValueError(f"{entry!r}: the key {key!r} is not a taint key like nvidia.com/gpu")
    if effect not in TAINT_EFFECTS:
        raise ValueError(f"{entry!r}: the effect {effect!r} is not one of {TAINT_EFFECTS[1:]}")
    return Toleration(key, value, effect)
