"""`python -m experiments.sim2real.learning_curve`: Real-Only's validation against its data size.

How much proxy-real data the table needs is decided here, without the test
objects: Real-Only (the table's recipe, steps and seed) is trained on nested
shares of the "all" budget and scored on the held-out real-train bins that
every row with real labels validates on. Each share is a cached stage under the
table's root, so it reuses the table's collections.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from experiments.sim2real.data import describe, prepare
from experiments.sim2real.models import Models
from experiments.sim2real.protocol import Settings, table_rows
from experiments.sim2real.stages import Stages, log
from models.grasp_success.training import train

ROW = "real-only-all"


def nested_shares(episodes: list, shares: list[float], seed: int) -> dict[float, list]:
    """Each share of `episodes` as a prefix of one seeded shuffle.

    Every smaller set is inside every larger one, so the curve measures the data size
    and not a new draw.
    """
    order = list(episodes)
    random.Random(seed).shuffle(order)
    return {share: order[: max(1, round(len(order) * share))] for share in shares}


def run(settings: Settings, root: Path, shares: list[float], command: str) -> dict:
    """Trains the curve's row on each nested share of the real episodes; returns the result."""
    stages = Stages(root)
    data = prepare(settings, root, stages, {"real"})
    row = next(r for r in table_rows() if r.name == ROW)
    spec = Models(settings, root, stages, data).spec(row, settings.reference_seeds[0])
    points = []
    for share, episodes in nested_shares(data.real_all, shares, settings.data_seed).items():

        def work(episodes=episodes) -> dict:
            result = train(
                spec,
                data.data_root,
                episodes,
                data.real_validation,
                model_base=None,
                progress_bar=False,
            )
            return {"metrics": result.metrics, "steps_per_s": result.steps_per_s}

        key = {"spec": repr(spec), "episodes": [e.episode_id for e in episodes], "v": 1}
        done = stages.run(f"curve-{ROW}-{len(episodes)}", key, work)
        metrics = done["metrics"]
        log(f"  {len(episodes)} episodes: validation AUC {metrics['auc']:.3f}")
        points.append(
            {
                "share": share,
                "episodes": len(episodes),
                "successes": sum(e.label.success for e in episodes),
                "validation": metrics,
            }
        )
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "row": ROW,
        "steps": spec.steps,
        "data": describe(data),
        "points": points,
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the learning curve and writes it as JSON; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.sim2real.learning_curve", description=__doc__
    )
    parser.add_argument("--root", default="var/sim2real", help="the table's stages and data")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--out", default="docs/results/sim2real-learning-curve.json")
    args = parser.parse_args(argv)
    if not all(0 < s <= 1 for s in args.shares):
        parser.error(f"--shares must be in (0, 1]: {args.shares}")
    command = "python -m experiments.sim2real.learning_curve " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    result = run(Settings(), Path(args.root), sorted(args.shares), command.strip())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
