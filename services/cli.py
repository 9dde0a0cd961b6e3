"""The `graspfleet` command: serve a service, inspect the store, run the local fleet."""

from __future__ import annotations

# Before anything imports TensorFlow or PyBullet: their start-up lines stay off the terminal.
from services.common import quiet

quiet.install()

import argparse
import importlib
import sys
from collections.abc import Sequence

import grpc

from services.common import logs
from services.episode_store import cli as store_cli
from services.fleet import evaluation_cli, process
from services.refiner import cli as refiner_cli
from services.trainer import cli as trainer_cli

# `graspfleet <name> serve [flags]` runs the module's main(); flags come from its config dataclass.
SERVICES = {
    "store": ("services.episode_store.server", "the episode store"),
    "predictor": ("services.grasp_predictor.server", "the grasp predictor (TF Serving API)"),
    "planner": ("services.servo_planner.server", "the servo-planner (CEM over the predictor)"),
    "sim-farm": ("services.sim_farm.server", "the sim-farm (simulated arms collecting episodes)"),
    "agent": ("services.robot_agent.server", "a robot agent (one arm's control loop)"),
    "trainer": ("services.trainer.server", "the trainer (runs, recipes, model registry)"),
    "refiner": ("services.refiner.server", "the refiner (GraspGAN and RCAN generators)"),
}


def _sim_snapshot(args: argparse.Namespace) -> int:
    from robots.snapshot import snapshot

    path = snapshot(args.out, seed=args.seed, size=args.size, canonical=args.canonical)
    print(f"wrote {path}")
    return 0


def _run(argv: Sequence[str]) -> int:
    from services.fleet.run import main

    return main(list(argv))


def build_parser() -> argparse.ArgumentParser:
    """The `graspfleet` command line: `run`, one command group per service, and the tools."""
    parser = argparse.ArgumentParser(prog="graspfleet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("run", help="run the whole local fleet (make run)", add_help=False)
    service_commands = {}
    for name, (_, help_text) in SERVICES.items():
        service = commands.add_parser(name, help=help_text)
        service_commands[name] = service.add_subparsers(dest=f"{name}_command", required=True)
        service_commands[name].add_parser(
            "serve", help=f"serve {help_text} (flags: serve --help)", add_help=False
        )
    refiner_cli.add_commands(service_commands["refiner"])
    service_commands["sim-farm"].add_parser(
        "shard",
        help="run one shard of a collection, as a pod of its Kubernetes Indexed Job does "
        "(flags: shard --help)",
        add_help=False,
    )
    service_commands["store"].add_parser(
        "rebuild-index",
        help="index every shard the metadata lacks; safe to rerun (flags: rebuild-index --help)",
        add_help=False,
    )

    sim = commands.add_parser("sim", help="the simulated world")
    sim_commands = sim.add_subparsers(dest="sim_command", required=True)
    shot = sim_commands.add_parser(
        "snapshot", help="PNG grid of x0 / xt / mask for each randomization and proxy-real"
    )
    shot.add_argument("--out", default="reports/sim-snapshot.png")
    shot.add_argument("--seed", type=int, default=0)
    shot.add_argument("--size", type=int, default=128, help="image side, pixels")
    shot.add_argument(
        "--canonical", action="store_true", help="add each xt's canonical image (RCAN)"
    )
    shot.set_defaults(handler=_sim_snapshot)

    store_cli.add_commands(commands)
    trainer_cli.add_commands(commands)
    evaluation_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `graspfleet` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    process.end_with_parent_if_asked()
    # Service commands take their own flags (generated from their config dataclass).
    if argv[:1] == ["run"]:
        return _run(argv[1:])
    if len(argv) >= 2 and argv[0] in SERVICES and argv[1] == "serve":
        importlib.import_module(SERVICES[argv[0]][0]).main(argv[2:])
        return 0
    if argv[:2] == ["sim-farm", "shard"]:
        from services.sim_farm import shard

        return shard.main(argv[2:])
    if argv[:2] == ["store", "rebuild-index"]:
        from services.episode_store import recovery

        return recovery.main(argv[2:])
    args = build_parser().parse_args(argv)
    logs.configure_logging("graspfleet-cli", "WARNING", "text")
    try:
        return args.handler(args)
    except grpc.RpcError as err:
        print(f"graspfleet: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
