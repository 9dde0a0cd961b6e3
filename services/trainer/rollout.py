"""Background rollout: promote good canaries automatically, retrain when enough new data arrived.

Promotion: a canary becomes stable once it has `rollout_min_grasps` labeled
REAL grasps in the store and its success rate is not worse than stable's by
more than `rollout_tolerance` (stable's rate over all its labeled REAL grasps;
a stable without any counts as no objection). A version that was stable
before and lost the label (a rollback) is never re-promoted automatically.

Retraining: the store's count of labeled REAL episodes is compared with a
watermark kept in the run database; `auto_retrain_episodes` more submit one
run of the configured recipe, unless the previous automatic run is still
queued or running. The first check sets the watermark: data that existed
before retraining was enabled does not trigger a run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc

from graspfleet.v1 import common_pb2, episode_store_pb2, trainer_pb2
from models.registry import CANARY, STABLE
from services.common import logs
from services.common.errors import ServiceError
from services.trainer import metrics, recipes
from services.trainer.runs import TERMINAL
from services.trainer.trainer import Trainer

log = logs.get_logger(__name__)

AUTO_USER = "auto-retrain"
ROLLOUT_USER = "rollout"
WATERMARK = "auto_retrain_labeled_real"


class Periodic:
    """Calls `action` every `interval_s` on its own thread until stopped."""

    def __init__(self, name: str, interval_s: float, action: Callable[[], None]) -> None:
        self.interval_s = interval_s
        self.action = action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.action()
            except grpc.RpcError as err:
                log.warning("episode store unavailable", extra={"error": err.code().name})
            except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                log.exception("periodic check failed", extra={"task": self._thread.name})

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


class Rollout:
    """Promotes canaries whose real grasp success holds up against stable's."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.config = trainer.config
        self._reported: set[tuple[str, int]] = set()

    def _real_grasps(self, name: str, version: int) -> tuple[int, float]:
        """(labeled REAL episodes, success rate) of episodes driven by name:version."""
        flt = episode_store_pb2.EpisodeFilter(
            domain=common_pb2.DOMAIN_REAL, model=common_pb2.ModelRef(name=name, version=version)
        )
        stats = self.trainer.store.Stats(episode_store_pb2.StatsRequest(filter=flt), timeout=30)
        return stats.labeled, stats.success_rate

    def check(self) -> list[tuple[str, int]]:
        """One round over every model; returns the (model, version) pairs promoted."""
        registry = self.trainer.registry
        promoted = []
        for name in registry.model_names():
            labels = registry.labels(name)
            canary, stable = labels.get(CANARY), labels.get(STABLE)
            if canary is None or canary == stable or registry.has_held(name, STABLE, canary):
                continue
            grasps, rate = self._real_grasps(name, canary)
            if grasps < self.config.rollout_min_grasps:
                continue
            reason = f"canary {canary}: {rate:.3f} success over {grasps} real grasps"
            if stable is not None:
                stable_grasps, stable_rate = self._real_grasps(name, stable)
                reason += f"; stable {stable}: {stable_rate:.3f} over {stable_grasps}"
                if stable_grasps and rate < stable_rate - self.config.rollout_tolerance:
                    if (name, canary) not in self._reported:
                        self._reported.add((name, canary))
                        log.warning("canary worse than stable; not promoted", extra={"why": reason})
                    continue
            registry.set_label(name, canary, STABLE, by=ROLLOUT_USER, reason=reason)
            metrics.AUTO_PROMOTIONS.labels(name).inc()
            log.info("canary promoted", extra={"model": name, "version": canary, "why": reason})
            promoted.append((name, canary))
        return promoted


class AutoRetrain:
    """Submits a run after every `auto_retrain_episodes` new labeled real episodes."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.config = trainer.config
        self.recipe = recipes.lookup(self.config.auto_retrain_recipe)

    def check(self) -> trainer_pb2.Run | None:
        """One round; returns the run it submitted, if any."""
        runs = self.trainer.runs
        flt = episode_store_pb2.EpisodeFilter(domain=common_pb2.DOMAIN_REAL)
        labeled = self.trainer.store.Stats(
            episode_store_pb2.StatsRequest(filter=flt), timeout=30
        ).labeled
        mark = runs.setting(WATERMARK)
        if mark is None:
            runs.set_setting(WATERMARK, str(labeled))
            return None
        new = labeled - int(mark)
        if new < self.config.auto_retrain_episodes:
            return None
        previous = runs.setting(WATERMARK + ":run")
        if previous and self.trainer.get(previous).state not in TERMINAL:
            return None  # the last automatic run has not finished; it will catch up after
        spec = trainer_pb2.RunSpec(
            recipe=self.recipe.value,
            params=trainer_pb2.TrainingParams(steps=self.config.auto_retrain_steps),
            description=f"automatic retraining: {new} new labeled real episodes",
        )
        try:
            run = self.trainer.submit(spec, submitted_by=AUTO_USER)
        except ServiceError as err:
            metrics.AUTO_RUNS.labels("refused").inc()
            log.error("automatic run refused", extra={"error": err.message})
            run = None
        else:
            metrics.AUTO_RUNS.labels("submitted").inc()
            runs.set_setting(WATERMARK + ":run", run.run_id)
        runs.set_setting(WATERMARK, str(labeled))
        return run
