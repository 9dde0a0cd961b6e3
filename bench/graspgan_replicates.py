"""GraspGAN's gain over replicates: the experiment once per seed, and how often refining helps.

One run of `bench.graspgan_experiment` measures one generator: the grasp
seeds' spread says nothing about how another GraspGAN, trained the same way,
would do. This runs the whole experiment once per seed — its own split of the
episodes into training and validation, its own generator and grasp models (the
episodes themselves are the same: `--sim-store`, and the proxy-real arm's own
seed) — and reports refined minus raw across those replicates: each
replicate's paired difference (mean over its grasp seeds), their mean and
standard error, and in how many refined was ahead.

    python -m bench.graspgan_replicates --root DIR --seeds 0 1 2 3 [--include DIR ...]
        [--summarize-only] -- EXPERIMENT_FLAGS

Replicate `s` lives in `DIR/seed-s`. A finished one (results.json says so) is
kept and not rerun, so a stopped run resumes where it was; an unfinished one
is moved aside to `DIR/seed-s.unfinished-<time>` and run again. `--include`
adds finished experiment folders from elsewhere. Every replicate must follow
the same protocol: settings may differ only in the seed, the number of grasp
seeds and the collection workers. The table goes to stdout and to
`DIR/summary.md`, every number to `DIR/summary.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.graspgan_experiment import SCORES, log, mean_se

# Settings that may differ between replicates of one protocol.
PER_REPLICATE = {"seed", "grasp_seeds", "workers"}
REPOSITORY = Path(__file__).resolve().parents[1]


def run_replicate(root: Path, seed: int, flags: list[str]) -> Path:
    """`root/seed-<seed>`, finished: kept if it already is, else (re)run in a child process."""
    folder = root / f"seed-{seed}"
    if finished(folder):
        log(f"{folder}: finished before, kept")
        return folder
    if folder.exists():
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = folder.with_name(f"{folder.name}.unfinished-{stamp}")
        folder.rename(aside)
        log(f"{folder}: unfinished, moved to {aside}")
    command = [sys.executable, "-m", "bench.graspgan_experiment", *flags]
    command += ["--seed", str(seed), "--out", str(folder)]
    log(f"replicate {seed}: {' '.join(command[1:])}")
    # The child finds this checkout's packages wherever it is started from.
    path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": path})
    return folder


def finished(folder: Path) -> bool:
    path = folder / "results.json"
    return path.is_file() and json.loads(path.read_text()).get("finished", False)


def load(folders: list[Path]) -> list[dict]:
    """Every folder's results, checked to be finished runs of one protocol."""
    replicates, protocol = [], None
    for folder in folders:
        if not finished(folder):
            raise SystemExit(f"{folder}: no finished experiment there (results.json)")
        results = json.loads((folder / "results.json").read_text())
        shared = {k: v for k, v in results["settings"].items() if k not in PER_REPLICATE}
        if protocol is None:
            protocol, first = shared, folder
        elif shared != protocol:
            differing = sorted(
                k for k in protocol.keys() | shared.keys() if protocol.get(k) != shared.get(k)
            )
            raise SystemExit(
                f"{folder} and {first} ran different protocols ({', '.join(differing)} differ); "
                "compare replicates of one protocol only"
            )
        replicates.append({"folder": str(folder), **results})
    seeds = [r["settings"]["seed"] for r in replicates]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"two replicates share a seed ({seeds}): they are not independent")
    return replicates


def summarize(replicates: list[dict]) -> dict:
    """Per replicate and across replicates: refined minus raw, the classifiers, the scene."""
    rows = []
    for r in sorted(replicates, key=lambda r: r["settings"]["seed"]):
        rows.append(
            {
                "seed": r["settings"]["seed"],
                "folder": r["folder"],
                "grasp_seeds": r["settings"]["grasp_seeds"],
                "raw": {s: r["grasp_models"]["sim_only"][s] for s in SCORES},
                "refined": {s: r["grasp_models"]["graspgan_sim_only"][s] for s in SCORES},
                "refined_minus_raw": {
                    pair: {s: d[s]["mean"] for s in SCORES if s in d}
                    for pair, d in r["refined_minus_raw"].items()
                },
                "classifier": {k: c["test_accuracy"] for k, c in r["domain_classifier"].items()},
                "scene": r["graspgan"]["scene"],
            }
        )
    across: dict = {}
    for pair in rows[0]["refined_minus_raw"]:
        across[pair] = {}
        for score in SCORES:
            values = [row["refined_minus_raw"][pair][score] for row in rows]
            across[pair][score] = mean_se(values) | {"ahead": sum(v > 0 for v in values)}
    return {
        "replicates": rows,
        "refined_minus_raw": across,
        "classifier": {
            name: mean_se([row["classifier"][name] for row in rows]) for name in ("raw", "refined")
        },
        "mask_iou_object": mean_se([row["scene"]["mask_iou_object"] for row in rows]),
    }


def markdown(summary: dict) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:+.3f}"

    def mean(cell: dict) -> str:
        se = "" if cell["se"] is None else f" ± {cell['se']:.3f}"
        return f"{cell['mean']:.3f}{se}"

    rows = summary["replicates"]
    lines = [
        "| seed | grasp seeds | raw AUC | refined AUC | Δ accuracy | Δ balanced accuracy "
        "| Δ AUC | classifier raw | classifier refined | object IoU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    pair = "graspgan_sim_only - sim_only"
    for row in rows:
        deltas = " | ".join(number(row["refined_minus_raw"][pair].get(s)) for s in SCORES)
        lines.append(
            f"| {row['seed']} | {row['grasp_seeds']} | {row['raw']['auc']:.3f} "
            f"| {row['refined']['auc']:.3f} | {deltas} | {row['classifier']['raw']:.3f} "
            f"| {row['classifier']['refined']:.3f} | {row['scene']['mask_iou_object']:.3f} |"
        )
    lines += [
        "",
        "| refined minus raw, across replicates | mean ± SE | refined ahead in |",
        "|---|---:|---:|",
    ]
    for pair_name, scores in summary["refined_minus_raw"].items():
        for score, cell in scores.items():
            lines.append(
                f"| {pair_name}: {score} | {mean(cell)} | {cell['ahead']} of {cell['n']} |"
            )
    classifier = summary["classifier"]
    lines += [
        "",
        f"Domain classifier (0.5: cannot tell) raw sim vs real {mean(classifier['raw'])}, "
        f"refined sim vs real {mean(classifier['refined'])}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.graspgan_replicates", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", required=True, help="the replicates' folder (seed-N inside)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="one replicate each")
    parser.add_argument("--include", nargs="*", default=[], help="finished experiment folders")
    parser.add_argument(
        "--summarize-only", action="store_true", help="run nothing; summarize what is finished"
    )
    parser.add_argument(
        "flags", nargs=argparse.REMAINDER, help="-- bench.graspgan_experiment's flags"
    )
    args = parser.parse_args(argv)
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    if {"--seed", "--out"} & set(flags):
        parser.error("--seed and --out are set per replicate; leave them out of the flags")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if args.summarize_only:
        ran = [f for f in (root / f"seed-{s}" for s in args.seeds) if finished(f)]
    else:
        ran = [run_replicate(root, seed, flags) for seed in args.seeds]
    folders = [Path(f) for f in args.include] + ran
    if not folders:
        parser.error("no replicates: give --seeds or --include")
    summary = summarize(load(folders))
    table = markdown(summary)
    (root / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    (root / "summary.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
