"""The run's report: success per model version, the label moves, success over time, pictures."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from graspfleet.v1 import episode_store_pb2, trainer_pb2, trainer_pb2_grpc
from models.registry import Registry, read_metadata
from models.scoring import Rate, difference_text, rate_text, wilson
from services.episode_store import client
from services.episode_store.client import pictures
from services.fleet.flywheel import RANDOM, list_real, real_grasps, recipe_name, run_state


@dataclass(frozen=True)
class VersionRow:
    """One model version's record in a run: what it learned from and how the arms grasped.

    Attributes:
        version: The version (flywheel.RANDOM for random exploration).
        grasps: Its labeled real grasps in the run, with the Wilson 95% interval.
        recipe: The recipe that trained it ("" for random).
        run_id: The trainer run that published it.
        sim_episodes: Simulated training episodes.
        real_episodes: Labeled real training episodes.
        published_s: Seconds into the run it was published (None: before the run).
        events: Its label moves, e.g. "stable at 612 s (rollout: ...)".
    """

    version: int
    grasps: Rate
    recipe: str = ""
    run_id: str = ""
    sim_episodes: int = 0
    real_episodes: int = 0
    published_s: float | None = None
    events: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """The row as a plain dict, for the JSON report."""
        row = asdict(self)
        row["grasps"] = self.grasps.as_dict()
        row["events"] = list(self.events)
        return row


def _trained_on(registry: Registry, name: str, version: int) -> tuple[int, int]:
    """(sim, real) training episodes a version's metadata records."""
    try:
        metadata = read_metadata(registry.folder(name) / str(version))
    except (FileNotFoundError, ValueError):
        return 0, 0
    selection = metadata.get("data", {}).get("selection", {})
    return int(selection.get("sim", {}).get("train", 0)), int(
        selection.get("real", {}).get("train", 0)
    )


def version_rows(
    grasps: dict[int, Rate],
    registry: Registry,
    name: str,
    changes: list[trainer_pb2.LabelChange],
    started: float,
) -> list[VersionRow]:
    """Every version the run published or grasped with, oldest first, random first of all."""
    described = {v.version: v for v in registry.versions(name)}
    rows = []
    for version in sorted({*grasps, *described}):
        rate = grasps.get(version, wilson(0, 0))
        if version == RANDOM:
            rows.append(VersionRow(RANDOM, rate))
            continue
        info = described.get(version)
        published = info.created_at.ToNanoseconds() / 1e9 - started if info else None
        events = tuple(
            f"{c.label} at {c.time.ToNanoseconds() / 1e9 - started:.0f} s ({c.by}: {c.reason})"
            for c in changes
            if c.version == version and c.time.ToNanoseconds() / 1e9 >= started
        )
        sim, real = _trained_on(registry, name, version)
        rows.append(
            VersionRow(
                version,
                rate,
                recipe=trainer_pb2.Recipe.Name(info.recipe).removeprefix("RECIPE_") if info else "",
                run_id=info.run_id if info else "",
                sim_episodes=sim,
                real_episodes=real,
                published_s=published if published is None or published >= 0 else None,
                events=events,
            )
        )
    return rows


def versions_table(rows: list[VersionRow]) -> str:
    """The per-version table of the report, Markdown."""
    lines = [
        "| version | recipe | trained on (sim / real episodes) | published | real grasps | "
        "success [95% interval] |",
        "|---|---|---|---:|---:|---|",
    ]
    for row in rows:
        name = "random" if row.version == RANDOM else f"v{row.version}"
        trained = f"{row.sim_episodes:,} / {row.real_episodes:,}" if row.recipe else "-"
        published = "-" if row.published_s is None else f"{row.published_s / 60:.1f} min"
        g = row.grasps
        rate = rate_text(g, counts=False)
        lines.append(
            f"| {name} | {row.recipe or '-'} | {trained} | {published} | "
            f"{g.successes}/{g.episodes} | {rate} |"
        )
    return "\n".join(lines)


def moved(change: trainer_pb2.LabelChange) -> bool:
    """Whether a label change moved a label onto a version (not a pin of none)."""
    return bool(change.version)


def decisions_list(changes: list[trainer_pb2.LabelChange], started: float) -> str:
    """The run's label moves, one per line, with who moved them and why."""
    lines = []
    for change in changes:
        at = change.time.ToNanoseconds() / 1e9 - started
        if at < 0 or not moved(change):
            continue  # before the run, or the registry pinning a label that did not move
        lines.append(
            f"- {at / 60:5.1f} min: {change.label} -> v{change.version} "
            f"(was v{change.previous or '-'}) by {change.by}: {change.reason}"
        )
    return "\n".join(lines) or "- none"


RECORDED_SUCCESS = "last_over_time(graspfleet:grasp_success:ratio[1h])"


def prometheus_table(prometheus) -> str:
    """The success rate per arm, model version and domain, as the local Prometheus recorded it.

    A Markdown table of the deployment's recording rule; "" when it recorded none.
    """
    rows = sorted(
        (labels.get("robot_id", ""), labels.get("model_version", ""), labels.get("domain", ""), v)
        for labels, v in prometheus.query(RECORDED_SUCCESS)
    )
    if not rows:
        return ""
    lines = [
        f"| robot | model version | domain | success (Prometheus, {RECORDED_SUCCESS}) |",
        "|---|---|---|---:|",
    ]
    lines += [f"| {r} | {m} | {d} | {v:.1%} |" for r, m, d, v in rows]
    return "\n".join(lines)


def flywheel_plot(
    episodes: list[episode_store_pb2.EpisodeSummary],
    changes: list[trainer_pb2.LabelChange],
    started: float,
    path: Path,
    window: int = 50,
) -> None:
    """Success over time: each version's running rate over its last `window` real grasps.

    Grasps are ordered by start time; the moves of the stable and canary labels are marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.8))
    by_version: dict[int, list[tuple[float, bool]]] = {}
    for episode in episodes:
        version = episode.model.version if episode.model.name else RANDOM
        at = (episode.started_at.ToNanoseconds() / 1e9 - started) / 60
        by_version.setdefault(version, []).append((at, episode.label.success))
    for version, points in sorted(by_version.items()):
        points.sort()
        times = np.array([t for t, _ in points])
        hits = np.array([s for _, s in points], dtype=float)
        kernel = np.ones(min(window, len(hits)))
        running = np.convolve(hits, kernel, mode="valid") / len(kernel)
        label = "random" if version == RANDOM else f"v{version}"
        axis.plot(times[len(kernel) - 1 :], running, label=f"{label} ({len(hits)} grasps)")
    for change in changes:
        at = (change.time.ToNanoseconds() / 1e9 - started) / 60
        if at < 0 or not change.version or change.label not in ("stable", "canary"):
            continue
        style = "-" if change.label == "stable" else ":"
        axis.axvline(at, linestyle=style, color="grey", alpha=0.7)
        axis.text(at, 0.97, f"{change.label} v{change.version}", rotation=90, fontsize=7,
                  color="grey", va="top")  # fmt: skip
    axis.set_xlabel("minutes into the run")
    axis.set_ylabel(f"success over the last {window} grasps")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(
        "Proxy-real grasp success per model version (solid: stable moves, dotted: canary)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def episode_pictures(stub, robots: list[str], folder: Path, per_robot: int = 3) -> list[Path]:
    """The pictures the report links: a contact sheet of each robot's last episodes.

    With it, the strips of one success and one failure among them.
    """
    chosen = []
    for robot in robots:
        found = list(client.list_all(stub, episode_store_pb2.EpisodeFilter(robot_ids=[robot])))
        chosen += found[-per_robot:]
    if not chosen:
        return []
    drawn = [pictures.contact_sheet(stub, [e.episode_id for e in chosen], folder / "episodes.png")]
    for success in (True, False):
        example = next((e for e in chosen if e.label.success == success), None)
        if example is not None:
            name = f"episode-{'success' if success else 'failure'}.png"
            drawn.append(pictures.episode_strip(stub, example.episode_id, folder / name))
    return drawn


def test_arm_table(test_arm: dict) -> str:
    """The closing evaluation: each contender's rate, and the stable version minus random."""
    lines = [
        f"{test_arm['scenes']} paired scenes of {test_arm['arm']} (the real-test objects), "
        f"scene seed {test_arm['seed']}; the oracle knows where every object is.",
        "",
        "| contender | successes | success [Wilson 95%] |",
        "|---|---:|---|",
    ]
    for row in test_arm["contenders"]:
        lines.append(
            f"| {row['name']} | {row['successes']}/{row['episodes']} | "
            f"{rate_text(row, counts=False)} |"
        )
    stable = f"stable-v{test_arm['stable_version']}"
    for pair in test_arm["paired"]:
        if pair["a"] == stable and pair["b"] == "random":
            lines += [
                "",
                f"{stable} minus random, paired by scene: {difference_text(pair)}",
            ]
    return "\n".join(lines)


def _scores(metrics: dict) -> str:
    """The validation scores a run recorded, as one line."""
    shown = [f"{k} {v:.3f}" for k, v in sorted(metrics.items()) if "auc" in k or "accuracy" in k]
    return ", ".join(shown) or "no validation scores recorded"


def _since(change: trainer_pb2.LabelChange, started: float) -> float:
    return change.time.ToNanoseconds() / 1e9 - started


def write(
    report_dir: Path,
    *,
    store,
    trainer: trainer_pb2_grpc.TrainerStub,
    registry: Registry,
    model: str,
    started: float,
    prometheus,
    plan: dict,
    arms: dict[str, str],
    first: trainer_pb2.Run,
    command: str,
    test_arm: dict | None = None,
) -> dict:
    """Writes summary.md, summary.json and the pictures; returns the summary.

    `test_arm` is the closing evaluation on the real-test arm (services.fleet.final_evaluation).
    """
    request = trainer_pb2.ListLabelChangesRequest(name=model)
    changes = list(trainer.ListLabelChanges(request, timeout=30).changes)
    rows = version_rows(real_grasps(store, started), registry, model, changes, started)
    stats = store.Stats(episode_store_pb2.StatsRequest(), timeout=30)
    flywheel_plot(list_real(store, started), changes, started, report_dir / "success_over_time.png")
    drawn = episode_pictures(store, list(arms), report_dir)
    runs = trainer.ListRuns(trainer_pb2.ListRunsRequest(page_size=100), timeout=30).runs
    runs = sorted(runs, key=lambda r: r.created_at.ToNanoseconds())
    table = versions_table(rows)
    decisions = decisions_list(changes, started)
    recorded = prometheus_table(prometheus) if prometheus else ""
    links = "\n".join(f"![{p.stem}]({p.name})" for p in drawn)
    run_lines = "\n".join(
        f"- {r.run_id} ({r.submitted_by}, {recipe_name(r)}): {run_state(r)}: {r.message}"
        for r in runs
    )
    elapsed = time.time() - started
    on = ", ".join(f"{robot}: {label}" for robot, label in arms.items())
    (report_dir / "summary.md").write_text(
        f"# graspfleet run\n\n`{command}`: {elapsed / 60:.1f} min, {len(arms)} proxy-real arms "
        f"({on}); episodes in the store: {stats.episodes} ({stats.steps} steps)\n\n"
        f"Version 1 (sim only): {_scores(dict(first.metrics))}\n\n"
        f"## Real grasps per model version\n\n{table}\n\n"
        f"## Label moves\n\n{decisions}\n\n"
        + (f"## On the real-test arm\n\n{test_arm_table(test_arm)}\n\n" if test_arm else "")
        + f"## Trainer runs\n\n{run_lines}\n\n"
        "![success over time](success_over_time.png)\n\n"
        + (f"## What Prometheus recorded\n\n{recorded}\n\n" if recorded else "")
        + f"{links}\n"
    )
    summary = {
        "command": command,
        "minutes": round(elapsed / 60, 2),
        "arms": arms,
        "plan": plan,
        "versions": [row.as_dict() for row in rows],
        "label_changes": [
            {
                "at_s": round(_since(c, started), 1),
                "action": c.action,
                "label": c.label,
                "version": c.version,
                "previous": c.previous,
                "by": c.by,
                "reason": c.reason,
            }
            for c in changes
            if _since(c, started) >= 0 and moved(c)
        ],
        "runs": [
            {
                "run_id": r.run_id,
                "submitted_by": r.submitted_by,
                "recipe": recipe_name(r),
                "state": run_state(r),
                "published_version": r.published.version,
                "message": r.message,
            }
            for r in runs
        ],
    }
    if test_arm:
        summary["test_arm"] = test_arm
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{table}\n\n{decisions}\n")
    return summary
