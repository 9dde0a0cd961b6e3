"""`python -m experiments.sim2real`: the closed-loop sim-to-real table, resumable (make sim2real).

Stages, each cached under --root and keyed by its settings: the collections,
then in order of what answers the most first: the sim-only and real-only
models with random, the oracle and the gap decomposition; the other rows
without generators; then the generators (GraspGAN, RCAN) and their rows.
Each phase is scored as soon as its models exist, so a stopped run leaves
complete rows behind. The report (JSON, markdown, bar plot) is rewritten after
every phase.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from experiments.sim2real import report
from experiments.sim2real.data import describe, needs, prepare
from experiments.sim2real.evaluate import Evaluations, Job, Scored
from experiments.sim2real.models import Models
from experiments.sim2real.protocol import QUICK, Row, Settings, table_rows
from experiments.sim2real.stages import Stages, log

FIRST = ("sim-only", "real-only-all")


def phases(rows: list[Row]) -> list[list[Row]]:
    """The rows in the order they are trained and scored."""
    first = [r for r in rows if r.name in FIRST]
    plain = [r for r in rows if r.name not in FIRST and r.sim in ("none", "plain", "randomized")]
    generated = [r for r in rows if r.sim in ("graspgan", "rcan")]
    return [p for p in (first, plain, generated) if p]


def run(settings: Settings, root: Path, out: Path, command: str) -> dict:
    stages = Stages(root)
    evaluations = Evaluations(settings, root, stages)
    rows = [r for r in table_rows() if r.name in settings.rows]
    trained: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    gap: dict[str, dict] = {}
    for index, phase in enumerate(phases(rows)):
        data = prepare(settings, root, stages, needs(phase))
        log(f"data: {describe(data)}")
        models = Models(settings, root, stages, data)
        scored = []
        for row in phase:
            seeds = settings.graspgan_seeds if row.name == "graspgan" else settings.seeds
            for seed in seeds:
                name = f"{row.name}-s{seed}"
                trained[name] = models.grasp_model(row, seed)
                rcan = models.rcan()["path"] if row.sim == "rcan" else ""
                scored.append(Scored(name, trained[name]["path"], rcan))
        jobs = [Job("main", evaluations.arm(None), scored, baselines=index == 0)]
        # The gap decomposition: the sim-only model with none, then each one, of the factors.
        sim_only = [s for s in scored if s.name.startswith("sim-only-")][:1]
        subsets = [(), *[(f,) for f in settings.factors]] if sim_only else []
        tags = {f"gap-{'-'.join(f) or 'none'}": "-".join(f) or "none" for f in subsets}
        jobs += [Job(i, evaluations.arm(f), sim_only) for i, f in zip(tags, subsets, strict=True)]
        found = evaluations.run(jobs)
        scores |= found["main"]
        for evaluation_id, tag in tags.items():
            gap[tag] = found[evaluation_id][sim_only[0].name]
        result = report.build(settings, describe(data), rows, trained, scores, gap, command)
        report.write(result, out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.sim2real", description=__doc__)
    parser.add_argument("--root", default="var/sim2real", help="stages, data and models")
    parser.add_argument("--out", default="docs/results", help="sim2real.json, .md and .png")
    parser.add_argument("--quick", action="store_true", help="tiny settings: the pipeline only")
    parser.add_argument(
        "--rows", nargs="+", help="only these rows (default: every row of the protocol)"
    )
    args = parser.parse_args(argv)
    # A stop (SIGTERM, or the end of a session) unwinds like Ctrl-C: the services this run
    # started are stopped, and the stages done so far stay cached for the next run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = QUICK if args.quick else Settings()
    if args.rows:
        unknown = set(args.rows) - {r.name for r in table_rows()}
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}")
        settings = Settings(**{**settings.as_dict(), "rows": tuple(args.rows)})
    command = "python -m experiments.sim2real " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    run(settings, Path(args.root), Path(args.out), command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
