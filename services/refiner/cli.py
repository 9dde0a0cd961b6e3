"""`graspfleet refiner ...` commands besides `serve`: the sim | refined | real sample grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_STORE = "127.0.0.1:50051"
# Where `make run` keeps its state: the store writes its port here, models live beside it.
FLEET_STORE_PORT_FILE = Path("logs") / "episode-store.port"


def _store_and_models(args: argparse.Namespace) -> tuple[str, Path]:
    if args.workdir:
        workdir = Path(args.workdir)
        port_file = workdir / FLEET_STORE_PORT_FILE
        if not port_file.is_file():
            raise ValueError(f"{port_file} does not exist: is the fleet in {workdir} running?")
        store = f"127.0.0.1:{port_file.read_text().strip()}"
        return store, Path(args.model_base or workdir / "models")
    return args.store or DEFAULT_STORE, Path(args.model_base or "var/models")


def _samples(args: argparse.Namespace) -> int:
    from services.refiner.samples import write_samples

    try:
        store, model_base = _store_and_models(args)
        grid = write_samples(
            Path(args.out),
            store,
            model_base,
            kind=args.kind,
            name=args.model,
            version=args.version,
            rows=args.rows,
            tile=args.tile,
            seed=args.seed,
        )
    except ValueError as err:
        print(f"graspfleet refiner samples: {err}", file=sys.stderr)
        return 1
    print(f"wrote {grid.path}: {grid.rows} rows, {grid.model.name} version {grid.model.version}")
    return 0


def add_commands(refiner_commands: argparse._SubParsersAction) -> None:
    """Adds `samples` to the `graspfleet refiner` subcommands."""
    samples = refiner_commands.add_parser(
        "samples", help="PNG grid of sim | refined | real images (the paper's Figure 1)"
    )
    where = samples.add_mutually_exclusive_group()
    where.add_argument("--store", help=f"episode store host:port (default {DEFAULT_STORE})")
    where.add_argument(
        "--workdir", help="a local fleet's state folder (make run: var/fleet): its store and models"
    )
    samples.add_argument(
        "--model-base", help="model repository (default var/models, or <workdir>/models)"
    )
    samples.add_argument("--kind", choices=["graspgan", "rcan"], default="graspgan")
    samples.add_argument("--model", default="", help="model name (default: the kind's name)")
    samples.add_argument("--version", type=int, default=0, help="0: stable, else the newest")
    samples.add_argument("--rows", type=int, default=4)
    samples.add_argument("--tile", type=int, default=128, help="tile side, pixels")
    samples.add_argument("--seed", type=int, default=0, help="chooses the episodes shown")
    samples.add_argument("--out", default="reports/refiner-samples.png")
    samples.set_defaults(handler=_samples)
