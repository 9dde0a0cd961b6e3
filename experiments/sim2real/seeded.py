"""Protocol 2's differences re-read with intervals over seeds and scenes (no new scores).

`python -m experiments.sim2real.seeded` reads docs/results/sim2real.json (every
seed's per-scene outcomes) and writes docs/results/sim2real-seeded.json: each
planned difference, and each row minus random exploration, with the
hierarchical bootstrap of `models.scoring.seeded_difference`. The table's own
intervals resample scenes only, which hides training noise: a row's seeds
differ by up to 25 of 150 scenes. A row with one seed still shows no seed
spread; only more seeds can.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.sim2real.report import PLANNED
from models.scoring import difference_text, seeded_difference


def _outcomes(record: dict) -> dict[int, bool]:
    return {int(k): bool(v) for k, v in record["outcomes"].items()}


def reread(table: dict) -> dict:
    """Every planned difference and every row minus random, over seeds and scenes."""
    rows = {r["row"]: [_outcomes(s) for s in r["seeds"]] for r in table["rows"]}
    rows |= {name: [_outcomes(b)] for name, b in table["baselines"].items()}

    def difference(a: str, b: str) -> dict:
        return {
            "seeds": [len(rows[a]), len(rows[b])],
            **seeded_difference(rows[a], rows[b]).as_dict(),
        }

    planned = {f"{a} - {b}": difference(a, b) for a, b in PLANNED if a in rows and b in rows}
    floor = {
        f"{r} - random": difference(r, "random") for r in rows if r not in ("random", "oracle")
    }
    return {
        "source": "docs/results/sim2real.json",
        "command": "python -m experiments.sim2real.seeded",
        "method": "hierarchical percentile bootstrap, 10,000 draws: each row's seeds, then "
        "the shared scenes, with replacement (models.scoring.seeded_difference)",
        "planned": planned,
        "minus_random": floor,
    }


def main(argv: list[str] | None = None) -> int:
    """Rereads the table with seeded differences, writes them and prints them; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m experiments.sim2real.seeded")
    parser.add_argument("--table", default="docs/results/sim2real.json")
    parser.add_argument("--out", default="docs/results/sim2real-seeded.json")
    args = parser.parse_args(argv)
    result = reread(json.loads(Path(args.table).read_text()))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, d in {**result["planned"], **result["minus_random"]}.items():
        print(f"{name}: {difference_text(d)} seeds {d['seeds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
