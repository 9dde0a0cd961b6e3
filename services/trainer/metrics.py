"""The trainer's Prometheus metrics, declared once."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from graspfleet.v1 import trainer_pb2

RUNS = Gauge("graspfleet_trainer_runs", "Runs in the trainer's database, by state.", ["state"])
RUN_SECONDS = Histogram(
    "graspfleet_trainer_run_duration_seconds",
    "From a run's start to its end, seconds, by recipe and final state.",
    ["recipe", "state"],
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 48 * 3600),
)
PUBLISHED = Counter(
    "graspfleet_trainer_published_versions_total", "Model versions published.", ["model"]
)
GATE_REJECTIONS = Counter(
    "graspfleet_trainer_gate_rejections_total", "Runs refused by the validation gate.", ["model"]
)
AUTO_PROMOTIONS = Counter(
    "graspfleet_trainer_auto_promotions_total",
    "Canaries promoted to stable by the rollout loop.",
    ["model"],
)
ROLLOUT_DECISIONS = Counter(
    "graspfleet_trainer_rollout_decisions_total",
    "Canaries promoted or rolled back by the rollout loop, by model and decision.",
    ["model", "decision"],
)
ROLLOUT_NOT_WORSE = Gauge(
    "graspfleet_trainer_rollout_not_worse_probability",
    "Posterior probability that the model's canary under test is not worse than stable by "
    "more than the rollout margin (ratio, 0-1).",
    ["model"],
)
ROLLOUT_WORSE = Gauge(
    "graspfleet_trainer_rollout_worse_probability",
    "Posterior probability that the model's canary under test is worse than stable (ratio, 0-1).",
    ["model"],
)
ROLLOUT_CANARY_GRASPS = Gauge(
    "graspfleet_trainer_rollout_canary_grasps",
    "Labeled real grasps of the canary under test since it became canary.",
    ["model"],
)
STABLE_WORSE = Gauge(
    "graspfleet_trainer_stable_worse_probability",
    "Posterior probability that the stable version grasps worse (labeled real grasps since "
    "its promotion) than the version it replaced did while it was stable (ratio, 0-1); "
    "absent until each has rollout_min_grasps.",
    ["model"],
)
STABLE_SUCCESS = Gauge(
    "graspfleet_trainer_stable_success_ratio",
    "Real grasp success of the stable version since its promotion (role=stable) and of the "
    "version it replaced while that was stable (role=predecessor) (ratio, 0-1).",
    ["model", "role"],
)
STABLE_GRASPS = Gauge(
    "graspfleet_trainer_stable_grasps",
    "Labeled real grasps behind graspfleet_trainer_stable_success_ratio, by role.",
    ["model", "role"],
)
AUTO_RUNS = Counter(
    "graspfleet_trainer_auto_runs_total", "Runs submitted by automatic retraining.", ["outcome"]
)
RUNS_ENDED = Counter(
    "graspfleet_trainer_runs_ended_total",
    "Runs that reached an end state (SUCCEEDED, REJECTED, FAILED, CANCELLED), by recipe, "
    "whether or not their job ever started.",
    ["recipe", "state"],
)
# Every recipe's failures start at 0, so that the first failure after a start is an
# increase Prometheus sees (a series that appears at 1 shows none).
for _recipe in trainer_pb2.Recipe.values():
    if _recipe:
        RUNS_ENDED.labels(trainer_pb2.Recipe.Name(_recipe).removeprefix("RECIPE_"), "FAILED")
