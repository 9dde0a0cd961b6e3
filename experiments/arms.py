"""One validation arm's report, as the lever experiments write it, and its Markdown table.

Rows of seeds, pooled rates, differences over seeds and scenes. Every row is a set of trained seeds scored on the arm's paired scenes beside
random exploration and the oracle; a row whose seeds are not all scored yet is
listed as such, never pooled from part of its seeds.
"""

from __future__ import annotations

from pathlib import Path

from experiments.sim2real.evaluate import outcomes
from models.scoring import difference_text, rate_text, seeded_difference, wilson

BASELINES = ("random", "oracle")
RATE_KEYS = ("successes", "episodes", "rate", "low", "high")


def arm_report(
    arm: Path,
    rows: dict[str, list[str]],
    trained: dict,
    scores: dict,
    planned: list[tuple[str, str]],
) -> dict:
    """The arm's baselines, each fully scored row, and the planned differences it allows.

    Args:
        arm: The arm's file (robots/evaluation/*.yaml).
        rows: Row -> the contender names of its seeds, in seed order.
        trained: Contender name -> its training stage's result (with "metrics").
        scores: Contender name -> its outcome record on this arm.
        planned: The (a, b) differences to report, where both rows are scored.
    """
    scored = [row for row, names in rows.items() if all(n in scores for n in names)]
    per_seed = {row: [outcomes(scores[n]) for n in rows[row]] for row in scored}
    floor = [outcomes(scores["random"])]

    def pooled(row: str) -> dict:
        successes = sum(scores[n]["successes"] for n in rows[row])
        episodes = sum(scores[n]["episodes"] for n in rows[row])
        return wilson(successes, episodes).as_dict()

    def seed(name: str) -> dict:
        return {
            **{k: scores[name][k] for k in ("successes", "episodes", "rate")},
            "best_step": trained[name]["metrics"].get("best_step"),
            "validation_auc": trained[name]["metrics"].get("auc"),
            "servoing": scores[name].get("servoing", {}),
        }

    return {
        "arm": str(arm.relative_to(arm.parents[2])),
        "baselines": {name: {k: scores[name][k] for k in RATE_KEYS} for name in BASELINES},
        "rows": {
            row: {
                "pooled": pooled(row),
                "seeds": {name: seed(name) for name in rows[row]},
                "minus_random": seeded_difference(per_seed[row], floor).as_dict(),
            }
            for row in scored
        },
        "not_yet_scored": [row for row in rows if row not in scored],
        "planned": {
            f"{a} - {b}": seeded_difference(per_seed[a], per_seed[b]).as_dict()
            for a, b in planned
            if a in per_seed and b in per_seed
        },
        "outcomes": {name: record["outcomes"] for name, record in scores.items()},
    }


def arm_markdown(arm: dict) -> list[str]:
    """The arm's table: baselines, rows (successes per seed, pooled, minus random), planned."""
    lines = [
        "",
        f"## {arm['arm']}",
        "",
        "| contender | seeds: successes of scenes | pooled [Wilson 95%] | minus random |",
        "|---|---|---|---|",
    ]
    for name, baseline in arm["baselines"].items():
        lines.append(f"| {name} | | {rate_text(baseline)} | |")
    for name, row in arm["rows"].items():
        seeds = ", ".join(str(s["successes"]) for s in row["seeds"].values())
        lines.append(
            f"| {name} | {seeds} | {rate_text(row['pooled'])} | "
            f"{difference_text(row['minus_random'])} |"
        )
    for name in arm.get("not_yet_scored", []):
        lines.append(f"| {name} | not yet scored | | |")
    planned = "; ".join(f"{k} {difference_text(v)}" for k, v in arm["planned"].items())
    return [*lines, "", f"Planned: {planned or 'none scored yet'}"]
