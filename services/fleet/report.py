"""The run's report: summary table, success over time, image samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graspfleet.v1 import common_pb2, episode_store_pb2
from services.episode_store import client
from services.episode_store.client import pictures


def summary_rows(
    stats: episode_store_pb2.StatsResponse,
) -> list[tuple[str, str, str, int, int, float]]:
    """(robot, domain, model, episodes, labeled, success rate) per group."""
    rows = []
    for g in stats.groups:
        model = f"{g.model.name}:{g.model.version}" if g.model.name else "- (random)"
        domain = common_pb2.Domain.Name(g.domain).removeprefix("DOMAIN_").lower()
        rows.append((g.robot_id, domain, model, g.episodes, g.labeled, g.success_rate))
    return rows


def format_table(rows, evaluation: dict[str, tuple[int, int]]) -> str:
    lines = [
        "| robot | domain | model | episodes | labeled | success rate |",
        "|---|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r} | {d} | {m} | {e} | {n} | {s:.1%} |" for r, d, m, e, n, s in rows]
    if evaluation:
        lines += [
            "",
            "| held-out objects, sim | episodes | successes | success rate |",
            "|---|---:|---:|---:|",
        ]
        for policy, (episodes, successes) in evaluation.items():
            lines.append(
                f"| {policy} | {episodes} | {successes} | {successes / max(episodes, 1):.1%} |"
            )
    return "\n".join(lines)


RECORDED_SUCCESS = "last_over_time(graspfleet:grasp_success:ratio[1h])"


def prometheus_table(prometheus) -> str:
    """The success rate per arm, model version and domain that the local Prometheus recorded
    (the deployment's recording rule), as a Markdown table; "" when it recorded none."""
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


def success_plot(stub, robots: list[str], path: Path) -> None:
    """Running success rate per robot over its episodes, marking model-version changes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for robot in robots:
        episodes = [
            e
            for e in client.list_all(stub, episode_store_pb2.EpisodeFilter(robot_ids=[robot]))
            if e.label.state != common_pb2.LABEL_STATE_UNLABELED
        ]
        if not episodes:
            continue
        successes = np.cumsum([e.label.success for e in episodes])
        rate = successes / np.arange(1, len(episodes) + 1)
        axis.plot(np.arange(1, len(episodes) + 1), rate, label=robot)
        versions = [e.model.version for e in episodes]
        for i in range(1, len(versions)):
            if versions[i] != versions[i - 1]:
                axis.axvline(i + 1, linestyle=":", color="grey")
                axis.text(i + 1, 0.02, f"v{versions[i]}", fontsize=8, color="grey")
    axis.set_xlabel("episode (per robot, in order)")
    axis.set_ylabel("grasp success rate so far")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title("Grasp success over time")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def episode_pictures(stub, robots: list[str], folder: Path, per_robot: int = 3) -> list[Path]:
    """A contact sheet of each robot's last episodes, and the strips of one success and one
    failure among them: the pictures the report links."""
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
