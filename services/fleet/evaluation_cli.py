"""`graspfleet eval`: score grasp models in closed loop on an arm configuration."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.scoring import rate_text
from services.evaluation.closed_loop import EvaluationSpec, evaluate, report
from services.evaluation.contenders import parse_contender
from services.fleet.evaluation import local_fleet

EXAMPLE = (
    "graspfleet eval run --arm robots/evaluation/proxy-real-test.yaml --model-base var/models "
    "--contender v3=cem:3 --contender random --contender oracle --scenes 150"
)


def _run(args: argparse.Namespace) -> int:
    spec = EvaluationSpec.from_file(
        args.id, args.arm, scenes=args.scenes, seed=args.seed, shards=args.shards
    )
    contenders = args.contender

    def progress(name: str, done: int, total: int) -> None:
        print(f"\r  {name}: {done}/{total} scenes", end="", file=sys.stderr, flush=True)

    def result(r) -> None:
        print(f"\r  {r.contender.name}: {rate_text(r.rate)}", file=sys.stderr)

    if args.farm:
        results = evaluate(args.farm, args.store, spec, contenders, progress, result)
    else:
        versions = sorted({c.model_version for c in contenders if c.model_version})
        transforms = any(c.transform for c in contenders)
        if versions and not args.model_base:
            raise SystemExit("--model-base is needed to serve the contenders' model versions")
        if transforms and not args.refiner_base:
            raise SystemExit("--refiner-base is needed for contenders with a transform")
        with local_fleet(
            Path(args.workdir) / args.id,
            args.model_base or "",
            versions,
            refiner_base=args.refiner_base if transforms else None,
            workers=args.shards,
        ) as fleet:
            results = evaluate(
                fleet.farm_address, fleet.store_address, spec, contenders, progress, result
            )
    summary = report(spec, results)
    text = json.dumps(summary, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


def add_commands(commands) -> None:
    """Adds `graspfleet eval run` to the top-level subcommands."""
    evaluation = commands.add_parser("eval", help="closed-loop evaluation of grasp models")
    sub = evaluation.add_subparsers(dest="eval_command", required=True)
    run = sub.add_parser(
        "run",
        help="contenders grasping the same scenes; success with Wilson intervals",
        description=f"Example: {EXAMPLE}",
    )
    run.add_argument("--arm", required=True, help="arm configuration file (YAML)")
    run.add_argument(
        "--contender",
        action="append",
        type=parse_contender,
        required=True,
        help="random | oracle | NAME=cem:VERSION[:rcan:RCAN_VERSION] (repeatable)",
    )
    run.add_argument("--id", default="eval", help="evaluation id; reuse it to resume")
    run.add_argument("--scenes", type=int, default=150)
    run.add_argument("--seed", type=int, default=7, help="scene seed")
    run.add_argument("--shards", type=int, default=2, help="shards (worker processes)")
    run.add_argument("--model-base", help="grasp model repository (local mode)")
    run.add_argument("--refiner-base", help="refiner model repository (local mode, transforms)")
    run.add_argument("--workdir", default="var/eval", help="local mode: store, spool and logs")
    run.add_argument("--farm", help="a running sim-farm host:port (instead of local services)")
    run.add_argument("--store", help="the store that farm writes to (with --farm)")
    run.add_argument("--json", help="also write the report here")
    run.set_defaults(handler=_run)
