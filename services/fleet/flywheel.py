"""The flywheel: arms grasping with the fleet's models while the trainer retrains and rolls out.

The arms run until stopped, each asking the planner for the model under its
label (a canary share asks for "canary", the rest for "stable") and streaming
every attempt to the store. Nothing here decides anything: the trainer submits
a run when enough new real episodes have arrived, publishes a version that
passes its gate as the canary, and promotes or rolls it back on the arms' own
grasps. This module starts the arms, reads the fleet's state through the
services' APIs, and prints it as a compact status table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from graspfleet.v1 import (
    common_pb2,
    episode_store_pb2,
    trainer_pb2,
    trainer_pb2_grpc,
)
from models.registry import CANARY, STABLE
from models.scoring import Rate, rate_text, wilson
from services.episode_store import client
from services.fleet.process import ServiceProcess
from services.robot_agent import client as agent_client
from services.trainer.client import ACTIVE, AUTO_USER, TERMINAL

RANDOM = 0  # the "version" of episodes no model drove (random exploration)


def canary_share(robots: list[str], canaries: int) -> dict[str, str]:
    """Robot -> the model label its agent asks for: the last `canaries` arms run the canary."""
    if not 0 <= canaries < len(robots):
        raise ValueError(
            f"{canaries} canary arms of {len(robots)}: at least one arm must stay on stable"
        )
    return {
        robot: CANARY if i >= len(robots) - canaries else STABLE for i, robot in enumerate(robots)
    }


@dataclass
class ArmState:
    """One arm as its agent reports it: the label it follows, its state, version and grasps."""

    robot: str
    label: str
    state: str = "starting"
    version: int = 0
    attempted: int = 0
    succeeded: int = 0
    error: str = ""


@dataclass
class Snapshot:
    """The fleet at one moment, as the services report it.

    Attributes:
        elapsed_s: Seconds since the flywheel started.
        labels: Label -> version of the grasp model.
        grasps: Version (RANDOM for none) -> its labeled real grasps since the run began.
        arms: Each arm's agent status.
        runs: The trainer's runs, newest first.
    """

    elapsed_s: float
    labels: dict[str, int]
    grasps: dict[int, Rate]
    arms: list[ArmState]
    runs: list[trainer_pb2.Run] = field(default_factory=list)


def real_grasps(store, since: float | None = None) -> dict[int, Rate]:
    """Labeled REAL grasps per model version (RANDOM: no model) from the store's stats."""
    flt = episode_store_pb2.EpisodeFilter(domain=common_pb2.DOMAIN_REAL)
    if since is not None:
        flt.since.FromNanoseconds(int(since * 1e9))
    stats = store.Stats(episode_store_pb2.StatsRequest(filter=flt), timeout=30)
    counts: dict[int, list[int]] = {}
    for group in stats.groups:
        total = counts.setdefault(group.model.version if group.model.name else RANDOM, [0, 0])
        total[0] += group.successes
        total[1] += group.labeled
    return {version: wilson(s, n) for version, (s, n) in sorted(counts.items())}


def _arm_state(arm: ServiceProcess, robot: str, label: str) -> ArmState:
    state = ArmState(robot, label)
    if arm.process is not None and arm.process.poll() is not None:
        state.state = f"exited ({arm.process.returncode})"
        return state
    try:
        status = agent_client.status(arm.address)
    except grpc.RpcError as err:
        state.state = f"unreachable ({err.code().name})"
        return state
    state.state = agent_client.state_name(status)
    state.version = status.model.version
    state.attempted, state.succeeded = status.episodes_attempted, status.episodes_succeeded
    state.error = status.last_error
    return state


class Flywheel:
    """The arms of the fleet and a view of what the trainer makes of their grasps.

    Args:
        start_agent: Starts one arm's agent (robot, label) and returns its process.
        labels: Robot -> the model label its agent asks for (see `canary_share`).
        store: Episode-store stub.
        trainer: Trainer stub.
        model_name: The grasp model the arms run.
        started: Epoch seconds the grasps are counted from.
    """

    def __init__(
        self,
        start_agent: Callable[[str, str], ServiceProcess],
        labels: dict[str, str],
        store,
        trainer: trainer_pb2_grpc.TrainerStub,
        model_name: str,
        started: float,
    ) -> None:
        self.start_agent = start_agent
        self.labels = labels
        self.store = store
        self.trainer = trainer
        self.model_name = model_name
        self.started = started
        self.arms: dict[str, ServiceProcess] = {}

    def start(self) -> None:
        """Starts every arm's agent on its label."""
        for robot, label in self.labels.items():
            self.arms[robot] = self.start_agent(robot, label)

    def stop_arms(self) -> None:
        """Stops every arm's agent; each flushes its episodes to the store first.

        No new grasp reaches the rollout, so no version is promoted on evidence
        gathered later.
        """
        for arm in self.arms.values():
            arm.stop()

    def snapshot(self) -> Snapshot:
        """The fleet now: the model's labels, real grasps per version, the arms and recent runs."""
        versions = self.trainer.ListModelVersions(
            trainer_pb2.ListModelVersionsRequest(name=self.model_name), timeout=10
        ).versions
        labels = {label: v.version for v in versions for label in v.labels}
        runs = self.trainer.ListRuns(trainer_pb2.ListRunsRequest(page_size=20), timeout=10).runs
        return Snapshot(
            elapsed_s=time.time() - self.started,
            labels=labels,
            grasps=real_grasps(self.store, self.started),
            arms=[_arm_state(self.arms[r], r, label) for r, label in self.labels.items()],
            runs=sorted(runs, key=lambda r: r.created_at.ToNanoseconds(), reverse=True),
        )

    def turn(
        self,
        until: float | None,
        every_s: float,
        show: Callable[[str], None] = print,
        until_runs: int | None = None,
    ) -> Snapshot:
        """Prints the status table every `every_s` until epoch `until` (None: until Ctrl-C).

        With `until_runs`, the flywheel also stops once that many automatic
        retrainings have ended (published, rejected, failed or cancelled); the
        trainer is then asked every few seconds rather than every `every_s`.

        Returns:
            The last snapshot taken.
        """
        last = self.snapshot()
        poll_s = every_s if until_runs is None else min(every_s, RUNS_POLL_S)
        shown = time.time()
        try:
            while until is None or time.time() < until:
                time.sleep(max(0.0, min(poll_s, (until or float("inf")) - time.time())))
                last = self.snapshot()
                ended = until_runs is not None and automatic_runs_ended(last) >= until_runs
                if ended or time.time() - shown >= every_s - 0.5:
                    show(status_table(last))
                    shown = time.time()
                if ended:
                    show(f"  {until_runs} automatic retraining(s) ended: the flywheel stops")
                    break
        except KeyboardInterrupt:
            show("\n  interrupted: writing the report")
        return last


def run_state(run: trainer_pb2.Run) -> str:
    """A run's state as a word: queued, running, succeeded, rejected..."""
    return trainer_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()


def recipe_name(run: trainer_pb2.Run) -> str:
    """A run's recipe without its prefix: NAIVE_MIX."""
    return trainer_pb2.Recipe.Name(run.spec.recipe).removeprefix("RECIPE_")


def status_table(snapshot: Snapshot) -> str:
    """The compact live view: versions with their grasps, the arms, the runs in flight."""
    minutes, seconds = divmod(int(snapshot.elapsed_s), 60)
    roles: dict[int, list[str]] = {}
    for label, version in sorted(snapshot.labels.items()):
        roles.setdefault(version, []).append(label)
    lines = [f"--- flywheel {minutes:02d}:{seconds:02d} ---"]
    lines.append(f"  {'version':<8} {'labels':<14} {'grasps':>6}  success [95% interval]")
    for version in sorted({*snapshot.grasps, *roles}):
        name = "random" if version == RANDOM else f"v{version}"
        rate = snapshot.grasps.get(version, wilson(0, 0))
        labels = ",".join(roles.get(version, [])) or "-"
        lines.append(
            f"  {name:<8} {labels:<14} {rate.episodes:>6}  {rate_text(rate, counts=False)}"
        )
    arms = []
    for arm in snapshot.arms:
        on = f"v{arm.version}" if arm.version else "-"
        arms.append(f"{arm.robot} {arm.label}={on} {arm.state} {arm.succeeded}/{arm.attempted}")
    lines.append("  arms: " + " | ".join(arms))
    active = [r for r in snapshot.runs if r.state in _ACTIVE]
    for run in active:
        lines.append(
            f"  run {run.run_id} {recipe_name(run)} {run_state(run)} {run.step}/{run.total_steps} steps"
        )
    finished = [r for r in snapshot.runs if r.state not in _ACTIVE][:1]
    for run in finished:
        lines.append(
            f"  last run {run.run_id} {recipe_name(run)} {run_state(run)}: {run.message[:100]}"
        )
    return "\n".join(lines)


_ACTIVE = (trainer_pb2.RUN_STATE_QUEUED, *ACTIVE)
RUNS_POLL_S = 2.0  # how often turn() asks the trainer when it waits for runs to end


def automatic_runs_ended(snapshot: Snapshot) -> int:
    """Automatic retrainings in the snapshot that have ended, whatever their outcome."""
    return sum(1 for r in snapshot.runs if r.submitted_by == AUTO_USER and r.state in TERMINAL)


def list_real(store, since: float) -> list[episode_store_pb2.EpisodeSummary]:
    """The labeled REAL episodes since `since`, in store order."""
    flt = episode_store_pb2.EpisodeFilter(domain=common_pb2.DOMAIN_REAL)
    flt.since.FromNanoseconds(int(since * 1e9))
    return [
        e for e in client.list_all(store, flt) if e.label.state != common_pb2.LABEL_STATE_UNLABELED
    ]
