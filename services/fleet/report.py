"""The run's report: summary table, success over time, image samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graspfleet.v1 import common_pb2, episode_store_pb2
from services.common.images import decode_image
from services.episode_store import client


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


def image_samples(stub, robots: list[str], path: Path, per_robot: int = 3) -> None:
    """x0 and the last xt of a few episodes of each robot, in a grid."""
    from PIL import Image

    rows = []
    for robot in robots:
        episodes = list(
            client.list_all(
                stub, episode_store_pb2.EpisodeFilter(robot_ids=[robot]), page_size=per_robot
            )
        )
        tiles = []
        for summary in episodes[:per_robot]:
            full = stub.GetEpisode(
                episode_store_pb2.GetEpisodeRequest(
                    episode_id=summary.episode_id, include_steps=True
                )
            )
            tiles += [decode_image(full.header.x0), decode_image(full.steps[-1].image)]
        if tiles:
            rows.append(np.concatenate(tiles, axis=1))
    if rows:
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
        Image.fromarray(np.concatenate(rows, axis=0)).resize(
            (width * 2, sum(r.shape[0] for r in rows) * 2), Image.NEAREST
        ).save(path)
