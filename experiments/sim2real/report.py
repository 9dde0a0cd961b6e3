"""The table's report: docs/results/sim2real.json, a markdown page and a bar plot."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.sim2real.data import collection_ids
from experiments.sim2real.evaluate import EVALUATION_ARM, outcomes
from experiments.sim2real.protocol import PROTOCOL_VERSION, Row, Settings
from experiments.sim2real.stages import log
from models.scoring import paired_difference, rate_text, wilson

RECORD = ("successes", "episodes", "rate", "low", "high", "outcomes")

# The comparisons decided before the run: (a, b) means "a minus b".
PLANNED = [
    ("rand", "sim-only"),
    ("graspgan", "rand"),
    ("graspgan", "sim-only"),
    ("rcan", "rand"),
    ("graspgan", "real-only-all"),
    ("rcan-ft-all", "real-only-all"),
    *[
        (f"{r}-{b}", f"real-only-{b}")
        for b in ("low", "all")
        for r in ("naive", "rand-dbn", "dann", "dann-r", "graspgan", "rcan-ft")
    ],
    *[
        (f"{r}-{b}", f"naive-{b}")
        for b in ("low", "all")
        for r in ("rand-dbn", "dann", "dann-r", "graspgan")
    ],
    ("real-only-all", "oracle"),
    ("sim-only", "random"),
]


def _row_outcomes(row: str, scores: dict) -> dict[int, float] | None:
    """Per-scene success of a row: a baseline's, or the mean over the row's seeds."""
    names = [n for n in scores if n == row or n.rsplit("-s", 1)[0] == row]
    if not names:
        return None
    per_seed = [outcomes(scores[n]) for n in names]
    scenes = set.intersection(*(set(o) for o in per_seed))
    return {s: sum(o[s] for o in per_seed) / len(per_seed) for s in sorted(scenes)}


def protocol(settings: Settings) -> dict:
    """What two runs must share for one's scores to stand in the other's table.

    That is the protocol's version, the settings but the rows, the collections (so
    the same episodes) and the evaluation arm.
    """
    return json.loads(
        json.dumps(
            {
                "version": PROTOCOL_VERSION,
                "settings": {k: v for k, v in settings.as_dict().items() if k != "rows"},
                "collections": collection_ids(settings),
                "evaluation_arm": hashlib.sha256(EVALUATION_ARM.read_bytes()).hexdigest()[:16],
            }
        )
    )


@dataclass
class Carried:
    """Scores an earlier run of the same protocol committed, so they are not run again.

    Attributes:
        scores: Contender name (a model's "<row>-s<seed>", "random", "oracle") to its record.
        trained: Model name to {"metrics": its validation metrics}.
        gap: Gap-decomposition tag to its record.
        data: The earlier run's data counts.
        runs: The earlier runs' command, date, commit and rows.
    """

    scores: dict = field(default_factory=dict)
    trained: dict = field(default_factory=dict)
    gap: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)


def carried(path: Path, current: dict) -> Carried:
    """The scored contenders of the report at `path`, when it measured the same protocol.

    Only records with their per-scene outcomes carry over (paired differences need them).
    A report of another protocol carries nothing, and the log says what differs.
    """
    if not path.exists():
        return Carried()
    prior = json.loads(path.read_text())
    if prior.get("protocol") != current:
        differs = sorted(k for k in current if (prior.get("protocol") or {}).get(k) != current[k])
        log(f"{path}: another protocol ({', '.join(differs)} differ); nothing carried over")
        return Carried()
    found = Carried(data=prior["data"], runs=prior.get("runs", []))
    for name, record in prior["baselines"].items():
        if "outcomes" in record:
            found.scores[name] = record
    for row in prior["rows"]:
        for seed in row["seeds"]:
            if "outcomes" in seed:
                found.scores[seed["name"]] = {k: seed[k] for k in RECORD}
                found.trained[seed["name"]] = {"metrics": seed["validation"]}
    found.gap = {tag: r for tag, r in prior["gap_decomposition"].items() if "outcomes" in r}
    log(f"{path}: carried over {sorted(found.scores)} and gap {sorted(found.gap)}")
    return found


def merge_data(earlier: dict, now: dict) -> dict:
    """The data counts of both runs; a part both collected must agree.

    Raises:
        RuntimeError: the same collection gave other episodes: the earlier scores are
            of other data, and mixing them would be wrong.
    """
    merged = dict(earlier)
    for part, counts in now.items():
        if not counts["episodes"]:
            merged.setdefault(part, counts)
            continue
        if earlier.get(part, {}).get("episodes") and earlier[part] != counts:
            raise RuntimeError(
                f"data part {part!r} is {counts} now but was {earlier[part]} when the carried "
                "scores were made: the collections are not reproducing; move the report aside "
                "to start the table afresh"
            )
        merged[part] = counts
    return merged


def commit() -> str:
    """The repository's commit (with "+dirty" for uncommitted changes), or "" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty.stdout.strip() else "")


def build(
    settings: Settings,
    data: dict,
    rows: list[Row],
    trained: dict,
    scores: dict,
    gap: dict,
    command: str,
    runs: list[dict] | None = None,
) -> dict:
    """Every row run so far, with pooled rates over seeds, planned paired differences and the gap.

    Args:
        settings: The protocol's settings.
        data: Episodes and successes of each part of the data (`data.describe`).
        rows: The rows to show, in the table's order.
        trained: Model name -> its training result (validation metrics).
        scores: Model or baseline name -> its closed-loop record.
        gap: Factor tag -> the sim-only model's record on that proxy-real arm.
        command: The command that made the report.
        runs: The runs whose scores the table holds (earlier ones carried over, this one).
    """
    table = []
    for row in rows:
        seeds = [n for n in scores if n.rsplit("-s", 1)[0] == row.name]
        if not seeds:
            continue
        successes = sum(scores[n]["successes"] for n in seeds)
        episodes = sum(scores[n]["episodes"] for n in seeds)
        table.append(
            {
                "row": row.name,
                "table": row.table,
                "label": row.label,
                "budget": row.budget,
                "seeds": [
                    {
                        "name": n,
                        **{k: scores[n][k] for k in RECORD},
                        "validation": trained.get(n, {}).get("metrics", {}),
                    }
                    for n in seeds
                ],
                **wilson(successes, episodes).as_dict(),
            }
        )
    baselines = {
        name: {k: scores[name][k] for k in RECORD}
        for name in ("random", "oracle")
        if name in scores
    }
    paired = []
    for a, b in PLANNED:
        oa, ob = _row_outcomes(a, scores), _row_outcomes(b, scores)
        if oa is not None and ob is not None:
            paired.append({"a": a, "b": b, **paired_difference(oa, ob).as_dict()})
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs or [],
        "protocol": protocol(settings),
        "settings": settings.as_dict(),
        "data": data,
        "evaluation": {
            "arm": "robots/evaluation/proxy-real-test.yaml",
            "scenes": settings.scenes,
            "scene_seed": settings.scene_seed,
        },
        "baselines": baselines,
        "rows": table,
        "paired": paired,
        "gap_decomposition": {tag: {k: record[k] for k in RECORD} for tag, record in gap.items()},
    }


def _cell(record: dict) -> str:
    return rate_text(record)


def markdown(result: dict) -> str:
    """The report as Markdown: the runs, the table, the paired differences and the gap."""
    lines = [
        "# Closed-loop sim-to-real table (generated by `make sim2real`)",
        "",
        "Success of the proxy-real arm grasping the real-test objects (never trained on),",
        "Wilson 95% intervals; rows pool their seeds. Made by these runs of one protocol:",
        "",
        *[
            f"- `{r['command']}` ({r['date']}, commit {r['commit'] or 'unknown'}): "
            f"{', '.join(r['scored']) or 'nothing new'}"
            for r in result["runs"]
        ],
        "",
        "| row | table | real labels | success |",
        "|---|---|---|---|",
    ]
    for name, record in result["baselines"].items():
        lines.append(f"| {name} | - | - | {_cell(record)} |")
    for row in result["rows"]:
        lines.append(
            f"| {row['label']} (`{row['row']}`) | {row['table']} | {row['budget']} | {_cell(row)} |"
        )
    if result["gap_decomposition"]:
        lines += [
            "",
            "Gap decomposition (sim-only model; proxy-real factors switched on alone):",
            "",
        ]
        lines += ["| factors | success |", "|---|---|"]
        lines += [f"| {tag} | {_cell(r)} |" for tag, r in result["gap_decomposition"].items()]
    if result["paired"]:
        lines += ["", "Planned paired differences (a − b, bootstrap 95% over scenes):", ""]
        lines += ["| a | b | scenes | a − b | interval |", "|---|---|---:|---:|---|"]
        lines += [
            f"| {p['a']} | {p['b']} | {p['scenes']} | {p['difference']:+.3f} | "
            f"[{p['low']:+.3f}, {p['high']:+.3f}] |"
            for p in result["paired"]
        ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Draws each baseline's and row's success rate with its interval to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [(n, r) for n, r in result["baselines"].items()]
    entries += [(r["row"], r) for r in result["rows"]]
    if not entries:
        return
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(entries) + 1))
    names = [n for n, _ in entries]
    rates = [r["rate"] for _, r in entries]
    errors = [
        [r["rate"] - r["low"] for _, r in entries],
        [r["high"] - r["rate"] for _, r in entries],
    ]
    axis.barh(names, rates, xerr=errors, color="#4c72b0", capsize=3)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("grasp success on real-test objects (proxy-real arm, 95% Wilson)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(result: dict, out: Path) -> None:
    """sim2real.json, sim2real.md and sim2real.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sim2real.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sim2real.md").write_text(markdown(result))
    plot(result, out / "sim2real.png")
