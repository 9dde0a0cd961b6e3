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

# Before anything imports TensorFlow or PyBullet: their start-up lines stay off the terminal.
from services.common import quiet

quiet.install()

import argparse
import signal
import sys
import time
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


def seeds(row: Row, settings: Settings) -> tuple[int, ...]:
    """A row's seeds: of its grasp model, and for the GraspGAN rows of its generator too.

    The generator seed was the largest source of variance: every GraspGAN row has three.
    """
    if row.sim == "graspgan":
        return settings.graspgan_seeds
    return settings.reference_seeds if row.name in FIRST else settings.seeds


def model_name(row: Row, seed: int) -> str:
    """The name of `row`'s grasp model for `seed`: "<row>-s<seed>"."""
    return f"{row.name}-s{seed}"


def gap_subsets(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The gap decomposition's factor sets by tag: none, then each proxy-real factor alone."""
    return {"-".join(f) or "none": f for f in [(), *[(f,) for f in settings.factors]]}


def run(settings: Settings, root: Path, out: Path, command: str) -> dict:
    """Trains and scores what the table lacks, row by row, rewriting the report after each.

    What an earlier run of the same protocol scored (its report at `out`, with per-scene
    outcomes) is carried over, not run again: the table can be completed over several
    runs, on other machines; the report lists every run that contributed.
    """
    stages = Stages(root)
    evaluations = Evaluations(settings, root, stages)
    rows = [r for r in table_rows() if r.name in settings.rows]
    earlier = report.carried(out / "sim2real.json", report.protocol(settings))
    trained, scores, gap, described = earlier.trained, earlier.scores, earlier.gap, earlier.data
    this_run = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "commit": report.commit(),
        "scored": [],
    }
    runs = earlier.runs
    sim_only_row = next(r for r in table_rows() if r.name == "sim-only")
    for index, phase in enumerate(phases(rows)):
        todo = [r for r in phase if any(model_name(r, s) not in scores for s in seeds(r, settings))]
        baselines = index == 0 and not {"random", "oracle"} <= set(scores)
        gaps = {}
        if sim_only_row in phase:
            gaps = {t: f for t, f in gap_subsets(settings).items() if t not in gap}
        if not (todo or baselines or gaps):
            log(f"phase {index + 1}: every row carried over")
            continue
        data = prepare(settings, root, stages, needs([*todo, *([sim_only_row] if gaps else [])]))
        log(f"data: {describe(data)}")
        described = report.merge_data(described, describe(data))
        models = Models(settings, root, stages, data)
        first: list[Job] = []
        if baselines:
            first.append(Job("main", evaluations.arm(None), [], baselines=True))
        # The gap decomposition: the sim-only model with none, then each one, of the factors.
        if gaps:
            seed = settings.reference_seeds[0]
            name = model_name(sim_only_row, seed)
            sim_only = Scored(name, models.grasp_model(sim_only_row, seed)["path"])
            first += [Job(f"gap-{t}", evaluations.arm(f), [sim_only]) for t, f in gaps.items()]
        if first:
            found = evaluations.run(first)
            scores |= found["main"]
            gap |= {tag: found[f"gap-{tag}"][sim_only.name] for tag in gaps}
            this_run["scored"] += [*found["main"], *(f"gap-{tag}" for tag in gaps)]
            runs = [*earlier.runs, this_run]
            report.write(_build(settings, described, trained, scores, gap, command, runs), out)
        # Row by row, each scored as soon as its models are trained: a run stopped halfway
        # through a phase keeps, in the report, every row it finished.
        for row in todo:
            scored = []
            for seed in seeds(row, settings):
                name = model_name(row, seed)
                trained[name] = models.grasp_model(row, seed)
                rcan = models.rcan()["path"] if row.sim == "rcan" else ""
                scored.append(Scored(name, trained[name]["path"], rcan))
            found = evaluations.run([Job("main", evaluations.arm(None), scored)])
            scores |= found["main"]
            this_run["scored"] += list(found["main"])
            runs = [*earlier.runs, this_run]
            report.write(_build(settings, described, trained, scores, gap, command, runs), out)
    return _build(settings, described, trained, scores, gap, command, runs)


def _build(
    settings: Settings,
    described: dict,
    trained: dict,
    scores: dict,
    gap: dict,
    command: str,
    runs: list[dict],
) -> dict:
    """The report of every row with a score, carried over or new."""
    shown = [r for r in table_rows() if any(model_name(r, s) in scores for s in seeds(r, settings))]
    return report.build(settings, described, shown, trained, scores, gap, command, runs)


def main(argv: list[str] | None = None) -> int:
    """Runs the protocol (or its tiny --quick settings, or some --rows); returns the exit status."""
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
