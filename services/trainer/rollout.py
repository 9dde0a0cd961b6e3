"""Background rollout: promote or roll back canaries on the arms' own grasps; retrain on new data.

Rollout: a canary is judged on the labeled REAL grasps it drove since it became
canary, against stable's grasps over the same period (the same objects, lights
and arms, as far as the fleet holds them equal). With a uniform prior on each
success rate, the posterior probability that the canary is not worse than
stable by more than `rollout_margin`, and the probability that it is worse, are
computed (models.scoring.probability_not_worse). Once both have
`rollout_min_grasps`:

- worse with probability >= `rollout_confidence`: rolled back (the canary label
  returns to stable's version, so the canary arms run stable again);
- not worse by the margin with that probability: promoted to stable;
- neither by `rollout_max_grasps` canary grasps or `rollout_max_wait_s`: rolled
  back, as not shown to be safe.

A canary with no stable to compare against is promoted at `rollout_min_grasps`.
Every promotion and rollback is a label change with its numbers in the reason
(`graspfleet models history`), counted in graspfleet_trainer_rollout_decisions_total;
the probabilities of the canary under test are gauges. A version that was
stable before and lost the label (a rollback) is never re-promoted
automatically. The decision is repeated every round on the growing counts (a
Bayesian rule: peeking does not bias the posterior, though it does the
frequentist error rate; the minimum sample keeps early noise out).

Retraining: the store's count of labeled REAL episodes is compared with a
watermark kept in the run database; `auto_retrain_episodes` more submit one
run of the schedule's recipe for that many real episodes, unless the previous
automatic run is still queued or running, the model has no stable version, a
canary is under test, or the store holds fewer than `auto_retrain_min_episodes`.
The first check sets the watermark: data that existed before retraining was
enabled does not trigger a run.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from graspfleet.v1 import common_pb2, episode_store_pb2, trainer_pb2
from models.registry import CANARY, STABLE, Registry
from models.scoring import Rate, probability_not_worse, rate_text, wilson
from services.common import logs
from services.common.errors import ServiceError
from services.trainer import metrics, recipes
from services.trainer.client import AUTO_USER, ROLLOUT_USER, TERMINAL
from services.trainer.trainer import Trainer

log = logs.get_logger(__name__)

WATERMARK = "auto_retrain_labeled_real"


class Periodic:
    """Calls `action` every `interval_s` on its own thread until stopped."""

    def __init__(self, name: str, interval_s: float, action: Callable[[], None]) -> None:
        self.interval_s = interval_s
        self.action = action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Starts the thread."""
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
        """Stops the thread, waiting up to 10 s for the action in progress."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


PROMOTE, ROLLBACK, WAIT = "promote", "rollback", "wait"


@dataclass(frozen=True)
class Decision:
    """What the rollout does with a canary now, and the numbers it decided on.

    Attributes:
        action: PROMOTE, ROLLBACK or WAIT.
        canary: The canary's grasps since it became canary.
        stable: Stable's grasps over the same period (None: there is no stable).
        not_worse: P(canary's rate > stable's − margin); 1 with no stable.
        worse: P(canary's rate < stable's); 0 with no stable.
        reason: One line with every number, as the label history records it.
    """

    action: str
    canary: Rate
    stable: Rate | None
    not_worse: float
    worse: float
    reason: str


def decide(
    canary: Rate,
    stable: Rate | None,
    *,
    margin: float,
    confidence: float,
    min_grasps: int,
    max_grasps: int,
    waited_s: float,
    max_wait_s: float,
) -> Decision:
    """The rollout's decision on a canary's and stable's grasps over the same period."""
    if stable is None:
        action = PROMOTE if canary.episodes >= min_grasps else WAIT
        reason = f"canary {rate_text(canary)}; no stable to compare with"
        return Decision(action, canary, None, 1.0, 0.0, reason)
    not_worse = probability_not_worse(
        canary.successes, canary.episodes, stable.successes, stable.episodes, margin
    )
    worse = 1.0 - probability_not_worse(
        canary.successes, canary.episodes, stable.successes, stable.episodes
    )
    numbers = (
        f"canary {rate_text(canary)}; stable {rate_text(stable)} over the same period; "
        f"P(not worse by {margin:.2f}) = {not_worse:.3f}, P(worse) = {worse:.3f}"
    )
    expired = canary.episodes >= max_grasps or waited_s >= max_wait_s

    def decision(action: str, why: str = "") -> Decision:
        return Decision(action, canary, stable, not_worse, worse, numbers + why)

    if min(canary.episodes, stable.episodes) < min_grasps:
        if expired:
            return decision(
                ROLLBACK, f"; fewer than {min_grasps} grasps each after the maximum wait"
            )
        return decision(WAIT)
    if worse >= confidence:
        return decision(ROLLBACK, ": shown worse")
    if not_worse >= confidence:
        return decision(PROMOTE, ": not worse")
    if expired:
        return decision(
            ROLLBACK,
            ": not shown not worse within the maximum wait "
            f"({max_grasps} grasps or {max_wait_s:.0f} s)",
        )
    return decision(WAIT)


def canary_under_test(registry: Registry, name: str) -> int | None:
    """The version labelled canary while the rollout has not decided on it.

    That is neither stable's version nor one stable before (a version that lost
    stable is not re-promoted).
    """
    labels = registry.labels(name)
    canary = labels.get(CANARY)
    if canary is None or canary == labels.get(STABLE) or registry.has_held(name, STABLE, canary):
        return None
    return canary


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _remove(gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


def _forget_stable_watch(name: str) -> None:
    """No predecessor to compare with: the stable-watch series go away."""
    _remove(metrics.STABLE_WORSE, name)
    for role in ("stable", "predecessor"):
        _remove(metrics.STABLE_SUCCESS, name, role)
        _remove(metrics.STABLE_GRASPS, name, role)


class Rollout:
    """Promotes canaries shown not worse than stable on real grasps; rolls back the rest."""

    def __init__(self, trainer: Trainer, clock: Callable[[], float] = time.time) -> None:
        self.trainer = trainer
        self.config = trainer.config
        self.clock = clock

    def _real_grasps(
        self, name: str, version: int, since: float, until: float | None = None
    ) -> Rate:
        """Labeled REAL episodes driven by name:version that started in [since, until)."""
        flt = episode_store_pb2.EpisodeFilter(
            domain=common_pb2.DOMAIN_REAL,
            model=common_pb2.ModelRef(name=name, version=version),
            since=_timestamp(since),
        )
        if until is not None:
            flt.until.CopyFrom(_timestamp(until))
        stats = self.trainer.store.Stats(episode_store_pb2.StatsRequest(filter=flt), timeout=30)
        return wilson(stats.successes, stats.labeled)

    def _label_moves(self, name: str, label: str) -> list[tuple[float, int, int | None]]:
        """(time, version, previous version) of each move of `label`, oldest first."""
        return [
            (
                datetime.datetime.fromisoformat(e["time"]).timestamp(),
                e["version"],
                e.get("previous"),
            )
            for e in self.trainer.registry.history(name)
            if e.get("label") == label
            and e.get("action") in ("set", "rollback")
            and e.get("version") is not None
            and "time" in e
        ]

    def _canary_since(self, name: str, canary: int) -> float:
        """When `canary` last became canary (epoch seconds); now if the history lacks it."""
        times = [t for t, version, _ in self._label_moves(name, CANARY) if version == canary]
        return times[-1] if times else self.clock()

    def watch_stable(self, name: str, stable: int | None) -> None:
        """Exports how stable grasps against the version it replaced, for the alert.

        Stable's labeled real grasps since it became stable, the predecessor's while
        it was stable, and P(stable worse) once each side has `rollout_min_grasps`.
        """
        moves = self._label_moves(name, STABLE)
        if stable is None or not moves or moves[-1][1] != stable or moves[-1][2] is None:
            _forget_stable_watch(name)
            return
        became, _, predecessor = moves[-1]
        earlier = [t for t, version, _ in moves[:-1] if version == predecessor]
        current = self._real_grasps(name, stable, became)
        before = self._real_grasps(name, predecessor, earlier[-1] if earlier else 0.0, became)
        for role, rate in (("stable", current), ("predecessor", before)):
            metrics.STABLE_SUCCESS.labels(name, role).set(rate.rate)
            metrics.STABLE_GRASPS.labels(name, role).set(rate.episodes)
        if min(current.episodes, before.episodes) < self.config.rollout_min_grasps:
            _remove(metrics.STABLE_WORSE, name)
            return
        worse = 1.0 - probability_not_worse(
            current.successes, current.episodes, before.successes, before.episodes
        )
        metrics.STABLE_WORSE.labels(name).set(worse)

    def check(self) -> list[tuple[str, int, Decision]]:
        """One round over every model; returns the (model, version, decision) of each change."""
        registry = self.trainer.registry
        config = self.config
        changes = []
        for name in registry.model_names():
            labels = registry.labels(name)
            canary, stable = labels.get(CANARY), labels.get(STABLE)
            self.watch_stable(name, stable)
            if canary_under_test(registry, name) is None:
                continue
            started = self._canary_since(name, canary)
            decision = decide(
                self._real_grasps(name, canary, started),
                None if stable is None else self._real_grasps(name, stable, started),
                margin=config.rollout_margin,
                confidence=config.rollout_confidence,
                min_grasps=config.rollout_min_grasps,
                max_grasps=config.rollout_max_grasps,
                waited_s=self.clock() - started,
                max_wait_s=config.rollout_max_wait_s,
            )
            metrics.ROLLOUT_NOT_WORSE.labels(name).set(decision.not_worse)
            metrics.ROLLOUT_WORSE.labels(name).set(decision.worse)
            metrics.ROLLOUT_CANARY_GRASPS.labels(name).set(decision.canary.episodes)
            if decision.action == WAIT:
                continue
            if decision.action == PROMOTE:
                registry.set_label(name, canary, STABLE, by=ROLLOUT_USER, reason=decision.reason)
                metrics.AUTO_PROMOTIONS.labels(name).inc()
            else:
                # The canary arms go back to stable's version; the canary stays published.
                reason = f"canary {canary} rolled back: {decision.reason}"
                registry.set_label(name, stable, CANARY, by=ROLLOUT_USER, reason=reason)
            metrics.ROLLOUT_DECISIONS.labels(name, decision.action).inc()
            log.info(
                f"canary {decision.action}",
                extra={"model": name, "version": canary, "why": decision.reason},
            )
            changes.append((name, canary, decision))
        return changes


class AutoRetrain:
    """Submits a run after every `auto_retrain_episodes` new labeled real episodes.

    It starts once the store holds `auto_retrain_min_episodes` in all.

    A run improves on stable, so none is submitted while the model has no stable
    version (the first version is a person's call) or while a canary is under test
    (one change on the arms at a time); the new episodes keep counting meanwhile.
    The recipe is the schedule's for the labeled real episodes in the store.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.config = trainer.config
        self.schedule = recipes.schedule(self.config.auto_retrain_recipe)
        self.template = self.config.auto_retrain_template()
        self.model = self.template.model_name or self.config.default_model_name

    def blocked(self) -> str:
        """Why no run may start now ("" when one may)."""
        previous = self.trainer.runs.setting(WATERMARK + ":run")
        if previous and self.trainer.get(previous).state not in TERMINAL:
            return f"automatic run {previous} has not finished"
        registry = self.trainer.registry
        if registry.labels(self.model).get(STABLE) is None:
            return f"{self.model} has no stable version to improve on"
        canary = canary_under_test(registry, self.model)
        if canary is not None:
            return f"canary {self.model}:{canary} is under test"
        return ""

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
        enough = labeled >= self.config.auto_retrain_min_episodes
        if new < self.config.auto_retrain_episodes or not enough or self.blocked():
            return None
        recipe = recipes.scheduled(self.schedule, labeled)
        spec = recipes.automatic_spec(self.template, recipe)
        if self.config.auto_retrain_steps:
            spec.params.steps = self.config.auto_retrain_steps
        spec.description = (
            f"automatic retraining: {new} new labeled real episodes, {labeled} in all "
            f"({recipe.name} by the schedule {self.config.auto_retrain_recipe!r})"
        )
        try:
            run = self.trainer.submit(spec, submitted_by=AUTO_USER)
        except ServiceError as err:
            metrics.AUTO_RUNS.labels("refused").inc()
            log.error(f"automatic run refused: {err.message}", extra={"error": err.message})
            run = None
        else:
            metrics.AUTO_RUNS.labels("submitted").inc()
            runs.set_setting(WATERMARK + ":run", run.run_id)
        runs.set_setting(WATERMARK, str(labeled))
        return run
