"""`make run`: the whole local fleet on embedded defaults, turning as a flywheel.

1. Starts a local Prometheus, the episode store (SQLite), the grasp predictor
   (an empty model repository), the servo-planner, the refiner (on the same
   repository: ready once the trainer publishes a GraspGAN or RCAN generator),
   the sim-farm and the trainer, with automatic retraining and the rollout
   switched on.
2. Bootstraps: the sim-farm collects simulated grasps at random on the train
   objects while the proxy-real arms make their first tries at random (no
   model exists yet); those real episodes are what the first gate scores on.
3. Asks the trainer for version 1 from simulation alone (no real labels), the
   one recipe of the sim-to-real table that fits the run's budget, and makes it
   stable (and canary: the canary arms run stable until a canary exists).
4. The flywheel: every arm grasps with CEM on its label's version (a canary
   share of the arms asks for "canary"), with a small share of random
   commands, streaming every attempt to the store. Each time enough new real
   episodes have arrived the trainer retrains on its own (the schedule's
   recipe, sim plus every real episode), publishes a version that passes its
   gate as the canary, and promotes it or rolls it back on the arms' grasps.
   No restart, no person. A status table is printed as it turns; the run ends
   after --minutes (or at Ctrl-C with --forever, or once --until-runs
   automatic retrainings have ended).
5. Writes the report: success per version with Wilson intervals and what each
   was trained on, the label moves and why, success over time, what
   Prometheus recorded, pictures, and summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format
from tqdm import tqdm

from graspfleet.v1 import (
    common_pb2,
    sim_farm_pb2,
    sim_farm_pb2_grpc,
    trainer_pb2,
)
from models.registry import Registry
from services.episode_store import client as store_client
from services.fleet import flywheel, report, training
from services.fleet.final_evaluation import evaluate_stable
from services.fleet.plan import ARMS, REPORT_RESERVE_S, TEST_ARM_RESERVE_S, Plan, plan_of
from services.fleet.process import Fleet, ServiceProcess
from services.robot_agent import client as agent_client
from services.sim_farm.client import run_collection
from services.trainer import client as trainer_client

Policy = sim_farm_pb2.CollectionPolicy
MODEL = "grasp_success"  # the trainer's default model name: the one the arms run
ROLLOUT_INTERVAL_S = 5
# After the arms stop: two of the rollout's rounds, so a decision already due is taken.
ROLLOUT_SETTLE_S = 2 * ROLLOUT_INTERVAL_S


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parses `graspfleet run`'s flags."""
    parser = argparse.ArgumentParser(prog="graspfleet run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument(
        "--forever", action="store_true", help="keep the flywheel turning until Ctrl-C"
    )
    parser.add_argument("--minutes", type=float, help="the whole run's budget (default 20)")
    parser.add_argument(
        "--until-runs",
        type=int,
        help="end earlier, once this many automatic retrainings have ended (whatever the outcome)",
    )
    parser.add_argument("--workdir", default="var/fleet", help="state of this run (wiped at start)")
    parser.add_argument("--reports", default="reports", help="where the report folder goes")
    parser.add_argument("--robots", nargs="+", help="proxy-real arms that get an agent")
    parser.add_argument(
        "--canary-arms", type=int, default=None, help="arms that run the canary (default: half)"
    )
    parser.add_argument("--bootstrap-episodes", type=int)
    parser.add_argument("--train-steps", type=int)
    parser.add_argument("--retrain-every", type=int)
    parser.add_argument("--retrain-first", type=int)
    parser.add_argument("--retrain-steps", type=int)
    parser.add_argument("--min-grasps", type=int)
    parser.add_argument(
        "--test-scenes",
        type=int,
        help="scenes of the closing evaluation on the real-test arm (default 60; 0 skips it)",
    )
    return parser.parse_args(argv)


def _collect(
    farm: ServiceProcess, spec: sim_farm_pb2.CollectionSpec, collection_id: str, label: str
):
    with (
        grpc.insecure_channel(farm.address) as channel,
        tqdm(total=spec.num_episodes, desc=label, unit="ep") as bar,
    ):

        def progress(collection: sim_farm_pb2.Collection) -> None:
            bar.update(collection.episodes_done - bar.n)
            bar.set_postfix(
                success=f"{collection.successes / max(collection.episodes_done, 1):.0%}"
            )

        return run_collection(sim_farm_pb2_grpc.SimFarmStub(channel), collection_id, spec, progress)


def _start_first_tries(fleet: Fleet, robots: list[str], flags: dict, episodes: int) -> list:
    """Agents that grasp `episodes` times each at random and exit (no model exists yet)."""
    return [
        fleet.start(
            f"agent-{robot}-first",
            ["agent", "serve"],
            {**flags, "robot_id": robot, "episodes": str(episodes), "exploration": "random"},
        )
        for robot in robots
    ]


def _wait_for_agents(fleet: Fleet, agents: list[ServiceProcess], episodes: int) -> None:
    """Waits until agents started with an episode limit have all exited."""
    with tqdm(total=episodes * len(agents), desc="the arms' first tries", unit="ep") as bar:
        while True:
            done = 0
            for agent in agents:
                if agent.process.poll() is not None:
                    done += episodes
                    continue
                with contextlib.suppress(grpc.RpcError):
                    done += agent_client.status(agent.address).episodes_attempted
            bar.update(done - bar.n)
            if all(agent.process.poll() is not None for agent in agents):
                break
            time.sleep(1.0)
    for agent in agents:
        fleet.processes.remove(agent)


@dataclass(frozen=True)
class Services:
    """The fleet's servers, started in the order they depend on each other."""

    store: ServiceProcess
    predictor: ServiceProcess
    planner: ServiceProcess
    refiner: ServiceProcess
    farm: ServiceProcess
    trainer: ServiceProcess


def _start_services(fleet: Fleet, plan: Plan, workdir: Path) -> Services:
    """Prometheus and the six servers (the arms' agents come later), on loopback."""
    models, store_dir = workdir / "models", workdir / "episode-store"
    fleet.start_prometheus()
    store = fleet.start("episode-store", ["store", "serve"], {"data_dir": str(store_dir)})
    predictor = fleet.start(
        "grasp-predictor",
        ["predictor", "serve"],
        {"model_base_path": str(models), "poll_interval_s": "1"},
        require_serving=False,
    )
    planner = fleet.start(
        "servo-planner", ["planner", "serve"], {"predictor_address": predictor.address}
    )
    # Version 1 and the retrainings need no generator (docs/decisions/flywheel-recipes.md);
    # the refiner serves one as soon as a researcher's GraspGAN or RCAN run publishes it, to
    # RCAN collections of the farm and to arms switched to canonicalize.
    refiner = fleet.start(
        "refiner",
        ["refiner", "serve"],
        {"model_base_path": str(models), "poll_interval_s": "5"},
        require_serving=False,
    )
    farm = fleet.start(
        "sim-farm",
        ["sim-farm", "serve"],
        {
            "store_address": store.address,
            "planner_address": planner.address,
            "refiner_address": refiner.address,
            "spool_dir": str(workdir / "spool"),
        },
    )
    auto_spec = workdir / "auto-retrain-spec.json"
    auto_spec.write_text(json_format.MessageToJson(training.automatic_run_spec(plan)))
    trainer = fleet.start(
        "trainer",
        ["trainer", "serve"],
        {
            "store_address": store.address,
            "store_data_dir": str(store_dir),
            "state_dir": str(workdir / "trainer"),
            "model_base": str(models),
            # `graspfleet train evaluate` on this fleet plays its scenes on this farm.
            "sim_farm_address": farm.address,
            "auto_retrain_enabled": "true",
            "auto_retrain_episodes": str(plan.retrain_every),
            "auto_retrain_min_episodes": str(plan.retrain_first),
            "auto_retrain_recipe": plan.recipes,
            "auto_retrain_spec_file": str(auto_spec),
            "auto_retrain_interval_s": "5",
            "rollout_interval_s": str(ROLLOUT_INTERVAL_S),
            "rollout_min_grasps": str(plan.min_grasps),
            "rollout_max_grasps": str(plan.max_grasps),
            "rollout_max_wait_s": str(plan.max_wait_s),
        },
    )
    return Services(store, predictor, planner, refiner, farm, trainer)


def _bootstrap(fleet: Fleet, services: Services, robots: list[str], plan: Plan, flags: dict):
    """Simulated random grasps on the train objects, and each arm's first random tries."""
    first_tries = _start_first_tries(fleet, robots, flags, plan.first_tries)
    bootstrap = sim_farm_pb2.CollectionSpec(
        num_episodes=plan.bootstrap_episodes,
        num_shards=2,
        max_steps=8,
        domain=common_pb2.DOMAIN_SIM,
        randomization=common_pb2.RANDOMIZATION_NONE,
        policy=Policy(kind=Policy.KIND_RANDOM),
        seed=1,
    )
    _collect(services.farm, bootstrap, "bootstrap", "sim collection (random, train objects)")
    _wait_for_agents(fleet, first_tries, plan.first_tries)


def _version_one(services: Services, token: str, plan: Plan) -> trainer_pb2.Run:
    """Version 1, trained on the simulated bootstrap through the trainer, made stable."""
    first = training.trainer_run(
        services.trainer,
        token,
        training.grasp_run_spec(
            trainer_pb2.RECIPE_SIM_ONLY,
            plan.train_steps,
            "make run: version 1, from the simulated bootstrap",
        ),
        "sim-only",
    )
    if not first.published.version:
        raise SystemExit(f"version 1 was not published: {first.message}")
    services.predictor.wait_ready(120)
    print(f"  grasp-predictor SERVING version {first.published.version}", flush=True)
    return first


def _flywheel_line(plan: Plan, arms: dict[str, str]) -> str:
    """What stage 4 does, as it prints it."""
    tuned = f", fine-tuning v{plan.retrain_start_from}" if plan.retrain_start_from else ""
    waits = ""
    if plan.retrain_first:
        waits = f" once {plan.retrain_first} real episodes are labeled, then"
    return (
        f"[4/5] the flywheel: {', '.join(f'{r} ({label})' for r, label in arms.items())}; "
        f"the trainer retrains ({plan.recipes}{tuned}){waits} every {plan.retrain_every} new "
        f"real episodes, and rolls out on {plan.min_grasps}+ grasps a side"
    )


def _closing_evaluation(wheel: flywheel.Flywheel, services: Services, plan: Plan, models: Path):
    """Stage 5: the arms stop, then the version the run ends on grasps the real-test objects."""
    if not plan.test_scenes:
        print("[5/5] report", flush=True)
        return {}
    print(
        f"[5/5] the arms stop; the stable version on the real-test arm "
        f"({plan.test_scenes} scenes, with random and the oracle), then the report",
        flush=True,
    )
    # With the arms stopped no new grasp arrives, and a rollout decision already due is
    # taken first: the version scored is the one the run ends on.
    wheel.stop_arms()
    time.sleep(ROLLOUT_SETTLE_S)
    return evaluate_stable(
        services.farm.address, services.store.address, Registry(models), MODEL, plan.test_scenes
    )


def main(argv: list[str]) -> int:
    """Runs the local fleet as a flywheel and writes its report; returns the exit status."""
    args = parse_args(argv)
    plan = plan_of(args)
    kind = "quick" if args.quick else "default"
    robots = args.robots or ARMS[kind]
    canaries = len(robots) // 2 if args.canary_arms is None else args.canary_arms
    arms = flywheel.canary_share(robots, canaries)
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    report_dir = Path(args.reports) / time.strftime("run-%Y%m%d-%H%M%S")
    report_dir.mkdir(parents=True, exist_ok=True)
    until = "until Ctrl-C" if args.forever else f"{plan.minutes:g} min"
    print(
        f"graspfleet local fleet ({kind} run, {until}): {len(robots)} proxy-real arms, "
        f"state in {workdir}/, logs in {workdir}/logs/"
    )
    started = time.time()
    fleet = Fleet(workdir)
    # One token guards every call that changes state (the trainer's, Relabel, Pause and
    # Resume); the services read it from the environment, so it stays out of `ps`.
    token = secrets.token_hex(16)
    os.environ["GRASPFLEET_AUTH_TOKEN"] = token
    try:
        print("[1/5] services", flush=True)
        services = _start_services(fleet, plan, workdir)
        print("[2/5] bootstrap: simulated grasps and the arms' first tries, at random", flush=True)
        agent_flags = {
            "planner_address": services.planner.address,
            "store_address": services.store.address,
            "refiner_address": services.refiner.address,
            "spool_dir": str(workdir / "agent-spool"),
        }
        _bootstrap(fleet, services, robots, plan, agent_flags)
        print(
            f"[3/5] version 1 through the trainer ({plan.train_steps} steps, sim labels only)",
            flush=True,
        )
        first = _version_one(services, token, plan)
        print(_flywheel_line(plan, arms), flush=True)
        flags = {**agent_flags, "exploration": "eps-mix", "epsilon": str(plan.epsilon)}

        def start_agent(robot: str, label: str) -> ServiceProcess:
            return fleet.start(
                f"agent-{robot}",
                ["agent", "serve"],
                {**flags, "robot_id": robot, "model_label": label},
            )

        store_channel, store_stub = store_client.connect(services.store.address)
        trainer_channel, trainer_stub = trainer_client.connect(services.trainer.address)
        with store_channel, trainer_channel:
            wheel = flywheel.Flywheel(start_agent, arms, store_stub, trainer_stub, MODEL, started)
            wheel.start()
            reserve = REPORT_RESERVE_S + (TEST_ARM_RESERVE_S if plan.test_scenes else 0)
            deadline = None if args.forever else started + plan.minutes * 60 - reserve
            wheel.turn(deadline, plan.status_every_s, until_runs=args.until_runs)
            models = workdir / "models"
            report.write(
                report_dir,
                store=store_stub,
                trainer=trainer_stub,
                registry=Registry(models),
                model=MODEL,
                started=started,
                prometheus=fleet.prometheus,
                plan=asdict(plan),
                arms=arms,
                first=first,
                command=" ".join(["graspfleet run", *argv]),
                test_arm=_closing_evaluation(wheel, services, plan, models),
            )
        print(f"report in {report_dir}/; total time {time.time() - started:.0f} s")
    finally:
        fleet.stop()
    return 0
