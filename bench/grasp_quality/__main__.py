"""Grasp-model quality on held-out objects: collect, train, CEM against random, a geometry bound.

Five sub-commands, each printing markdown tables (and writing every number to
`--json PATH`), so one idea about the grasp model costs minutes to check:

    python -m bench.grasp_quality collect --data DIR [--train-episodes 600] [--test-episodes 200]
        [--workers 2] [--attempts 1] [--oracle-fraction 0] [--oracle-sigma-m 0.02]
        [--oracle-yaw-sigma 0.3]
    python -m bench.grasp_quality train --data DIR --models DIR [--steps 1500] [--eval-every 150]
    python -m bench.grasp_quality evaluate --models DIR [--episodes 40] [--planner KEY=VALUE ...]
    python -m bench.grasp_quality geometry [--episodes 200] [--object-set train]
    python -m bench.grasp_quality aiming [--episodes 60] [--object-set sim-test]

`collect` runs simulated episodes into an episode store folder: training
episodes on the train objects (random exploration, optionally mixed with the
noisy oracle, optionally several attempts per scene) and held-out episodes on
the test objects (always random exploration, one attempt per scene, so
validation numbers stay comparable across data recipes). A rerun collects only
the episodes the folder lacks. `train` trains the grasp model with the
project's training job on the training episodes, validated on the held-out
ones. `evaluate` starts the fleet's services on loopback and lets the sim-farm
grasp held-out objects with CEM on the model and with random exploration, on
the same scenes. `geometry` measures how well privileged geometry alone (the
fingertips' distance to the nearest object) predicts random grasps' success.
`aiming` measures what aiming is worth: the oracle's planned grasp, missed on
purpose by set amounts, against random exploration on the same scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.grasp_quality.aiming import aiming, print_aiming
from bench.grasp_quality.collect import collect, print_collect
from bench.grasp_quality.data import SPLITS, DataSettings
from bench.grasp_quality.evaluate import evaluate, print_evaluate
from bench.grasp_quality.geometry import geometry, print_geometry
from bench.grasp_quality.train import print_train, train


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: need at least 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.grasp_quality", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", help="also write every number to this JSON file")
        return sub

    c = command("collect", "random-policy sim episodes on train and held-out objects")
    c.add_argument("--data", required=True, help="data folder (an episode store plus settings)")
    c.add_argument("--train-episodes", type=_count, default=600, help="episodes on train objects")
    c.add_argument("--test-episodes", type=_count, default=200, help="episodes on held-out objects")
    c.add_argument(
        "--workers", type=_positive, default=2, help="worker processes (1: this process)"
    )
    c.add_argument("--attempts", type=_positive, default=1, help="attempts per training scene")
    c.add_argument("--oracle-fraction", type=float, default=0.0, help="noisy-oracle share")
    c.add_argument("--oracle-sigma-m", type=float, default=0.02, help="grasp point noise, m")
    c.add_argument("--oracle-yaw-sigma", type=float, default=0.3, help="closing yaw noise, rad")
    c.add_argument("--max-steps", type=_positive, default=8)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--masks", action="store_true", help="store segmentation masks")

    t = command("train", "train the grasp model on a data folder, validated on held-out objects")
    t.add_argument("--data", required=True)
    t.add_argument("--models", required=True, help="model base path; the version goes under it")
    t.add_argument("--steps", type=_positive, default=1500)
    t.add_argument("--eval-every", type=_count, default=150, help="validate every N steps")
    t.add_argument("--batch-size", type=_positive, default=32)
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--profile", default="default")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--scene-weight",
        type=float,
        default=0.0,
        help="weight of the auxiliary scene loss (needs data collected with --masks)",
    )
    t.add_argument("--train-episodes", type=_count, default=0, help="use the first N (0: all)")
    t.add_argument(
        "--train-eval-episodes",
        type=_positive,
        default=200,
        help="training episodes scored at the end, to show memorization",
    )
    t.add_argument(
        "--keep-last",
        action="store_true",
        help="export the last step's weights, not the best validated ones",
    )

    e = command("evaluate", "CEM on a model against random exploration, held-out objects")
    e.add_argument("--models", required=True, help="model base path; its newest version serves")
    e.add_argument("--episodes", type=_positive, default=40, help="episodes per policy")
    e.add_argument("--workers", type=_positive, default=2, help="sim-farm worker processes")
    e.add_argument("--seed", type=int, default=99)
    e.add_argument("--max-steps", type=_positive, default=8)
    e.add_argument(
        "--planner",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="servo-planner settings, e.g. close_ratio=0.8 grasp_band_m=0.02",
    )
    e.add_argument(
        "--work",
        default="var/grasp-quality/evaluations",
        help="each evaluation's services and store go to a new folder under it",
    )

    g = command("geometry", "how well fingertip-to-object distance predicts random grasps")
    g.add_argument("--episodes", type=_positive, default=200)
    g.add_argument("--object-set", default="train", choices=sorted(SPLITS.values()))
    g.add_argument("--workers", type=_positive, default=1)
    g.add_argument("--max-steps", type=_positive, default=8)
    g.add_argument("--seed", type=int, default=7)

    a = command("aiming", "the oracle's grasp missed on purpose against random, same scenes")
    a.add_argument("--episodes", type=_positive, default=60, help="episodes per variant")
    a.add_argument("--object-set", default="sim-test", choices=sorted(SPLITS.values()))
    a.add_argument("--workers", type=_positive, default=2)
    a.add_argument("--max-steps", type=_positive, default=8)
    a.add_argument("--seed", type=int, default=11)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "collect":
        try:
            settings = DataSettings(
                seed=args.seed,
                attempts=args.attempts,
                oracle_fraction=args.oracle_fraction,
                oracle_sigma_m=args.oracle_sigma_m,
                oracle_yaw_sigma_rad=args.oracle_yaw_sigma,
                max_steps=args.max_steps,
                masks=args.masks,
            )
        except ValueError as err:
            raise SystemExit(f"collect: {err}") from None
        counts = {"train": args.train_episodes, "test": args.test_episodes}
        result = collect(settings, Path(args.data), counts, args.workers)
        print_collect(result)
    elif args.command == "train":
        result = train(args)
        print_train(result)
    elif args.command == "evaluate":
        result = evaluate(args)
        print_evaluate(result)
    elif args.command == "aiming":
        result = aiming(args)
        print_aiming(result)
    else:
        result = geometry(args)
        print_geometry(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({args.command: result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
