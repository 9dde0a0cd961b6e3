"""`make run`: the whole local fleet on embedded defaults, as processes on loopback.

1. Starts the episode store (SQLite), the grasp predictor (an empty model
   repository), the servo-planner, the sim-farm and the trainer.
2. Bootstraps: the sim-farm collects simulated grasps with random exploration,
   and the proxy-real arms make their first tries at random (no model exists).
3. Asks the trainer for the first grasp-success model (sim-only): a run like
   any other, gated on the arms' held-out episodes and recorded in the model
   registry; published as version 1 and labelled stable, the predictor picks
   it up by itself.
4. Measures CEM on that sim-only model against random grasping on held-out
   objects in simulation, the same scenes for both.
5. Starts robot agents on the proxy-real arms of robots/fleet/, which grasp
   with CEM on that model and stream every attempt to the store.
6. Asks the trainer for a retraining run (DANN with domain-specific batch norm
   on sim plus the agents' real episodes); a model that passes the gate is
   published as the canary, promoted to stable, and the agents, asking for
   "stable", grasp with it without being restarted.
7. Prints a summary and writes a report folder (plot, image samples, table).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from tqdm import tqdm

from graspfleet.v1 import (
    common_pb2,
    robot_agent_pb2,
    robot_agent_pb2_grpc,
    sim_farm_pb2,
    sim_farm_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from models.registry import STABLE
from services.common.auth import USER_HEADER, bearer
from services.fleet import report
from services.fleet.process import ServiceProcess
from services.fleet.prometheus import LocalPrometheus
from services.sim_farm.client import run_collection

Policy = sim_farm_pb2.CollectionPolicy


@dataclass(frozen=True)
class Plan:
    bootstrap_episodes: int
    validation_episodes: int
    train_steps: int
    agent_episodes: int
    retrain_steps: int
    eval_episodes: int


PLANS = {
    "quick": Plan(
        bootstrap_episodes=60,
        validation_episodes=20,
        train_steps=150,
        agent_episodes=5,
        retrain_steps=100,
        eval_episodes=8,
    ),
    "default": Plan(
        bootstrap_episodes=4000,
        validation_episodes=200,
        train_steps=4000,
        agent_episodes=25,
        retrain_steps=1000,
        eval_episodes=60,
    ),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="graspfleet run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about two minutes")
    parser.add_argument("--workdir", default="var/fleet", help="state of this run (wiped at start)")
    parser.add_argument("--reports", default="reports", help="where the report folder goes")
    parser.add_argument(
        "--robots", nargs="+", default=["kuka-01", "kuka-02"], help="arms that get an agent"
    )
    parser.add_argument("--bootstrap-episodes", type=int)
    parser.add_argument("--train-steps", type=int)
    parser.add_argument("--agent-episodes", type=int)
    parser.add_argument("--eval-episodes", type=int)
    return parser.parse_args(argv)


# The scrape job of each `graspfleet <service> serve`, named as the ServiceMonitors name
# them (app.kubernetes.io/name): the rules match these names.
JOBS = {
    "store": "episode-store",
    "predictor": "grasp-predictor",
    "planner": "servo-planner",
    "sim-farm": "sim-farm",
    "trainer": "trainer",
    "agent": "robot-agent",
}


class Fleet:
    """The local fleet's processes and its Prometheus, stopped in reverse order on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.processes: list[ServiceProcess] = []
        self.prometheus: LocalPrometheus | None = None

    def start_prometheus(self) -> None:
        """Prometheus with the deployment's rules, scraping every service started from now."""
        if not LocalPrometheus.available():
            print("  no prometheus binary (make sysdeps installs it): metrics not recorded")
            return
        self.prometheus = LocalPrometheus(self.workdir / "prometheus").start(
            sorted(set(JOBS.values()))
        )
        print(f"  prometheus on {self.prometheus.url}", flush=True)

    def start(
        self, name: str, command: list[str], flags: dict, require_serving: bool = True
    ) -> ServiceProcess:
        flags = {"log_format": "text", "metrics_port": "0", **flags}
        process = ServiceProcess(name, command, flags, self.logs)
        print(f"  starting {name} ...", flush=True)
        process.start(timeout_s=120, require_serving=require_serving)
        self.processes.append(process)
        print(f"  {name} on {process.address}", flush=True)
        job = JOBS.get(command[0])
        if self.prometheus is not None and job and process.metrics_port:
            self.prometheus.scrape(job, f"127.0.0.1:{process.metrics_port}")
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.prometheus is not None:
            self.prometheus.stop()


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


def _run_agents(fleet: Fleet, robots: list[str], flags: dict, episodes: int) -> None:
    agents = [
        fleet.start(
            f"agent-{robot}",
            ["agent", "serve"],
            {**flags, "robot_id": robot, "episodes": str(episodes)},
        )
        for robot in robots
    ]
    desc = f"agents grasping ({flags.get('exploration', 'cem')})"
    with tqdm(total=episodes * len(agents), desc=desc, unit="ep") as bar:
        while True:
            done, states = 0, []
            for agent in agents:
                if agent.process.poll() is not None:
                    done += episodes
                    continue
                try:
                    with grpc.insecure_channel(agent.address) as channel:
                        status = robot_agent_pb2_grpc.RobotAgentStub(channel).GetStatus(
                            robot_agent_pb2.GetStatusRequest(), timeout=2
                        )
                    done += status.episodes_attempted
                    states.append(
                        robot_agent_pb2.AgentState.Name(status.state)
                        .removeprefix("AGENT_STATE_")
                        .lower()
                    )
                except grpc.RpcError:
                    done += 0
            bar.update(done - bar.n)
            bar.set_postfix(states=",".join(states) or "done")
            if all(agent.process.poll() is not None for agent in agents):
                break
            time.sleep(1.0)
    for agent in agents:
        fleet.processes.remove(agent)


def held_out_trial(
    farm: ServiceProcess,
    policy: str,
    episodes: int,
    *,
    shards: int = 2,
    max_steps: int = 8,
    seed: int = 99,
    label: str = "",
) -> sim_farm_pb2.Collection:
    """One policy ("random" or "cem") grasping held-out objects in simulation, to its end.

    The same seed and shard count give every policy the same scenes, so their
    outcomes pair up by episode seed. The collection id is "eval-<policy>".
    """
    kind = {"random": Policy.KIND_RANDOM, "cem": Policy.KIND_CEM}[policy]
    spec = sim_farm_pb2.CollectionSpec(
        num_episodes=episodes,
        num_shards=min(shards, episodes),
        max_steps=max_steps,
        domain=common_pb2.DOMAIN_SIM,
        randomization=common_pb2.RANDOMIZATION_NONE,
        object_set="sim-test",
        policy=Policy(kind=kind),
        seed=seed,
    )
    return _collect(farm, spec, f"eval-{policy}", label or f"{policy} on held-out objects")


def _evaluate(farm: ServiceProcess, episodes: int) -> dict[str, tuple[int, int]]:
    """Random exploration, then CEM on the serving model, on the same held-out sim scenes.

    Returns:
        {policy: (episodes, successes)}.
    """
    evaluation = {}
    for policy, name in (("random", "random"), ("cem", "cem (sim-only model)")):
        collection = held_out_trial(farm, policy, episodes, label=f"eval {name}")
        evaluation[name] = (collection.episodes_done, collection.successes)
    return evaluation


def _trainer_run(
    trainer: ServiceProcess, token: str, spec: trainer_pb2.RunSpec, what: str
) -> trainer_pb2.Run:
    """A run through the trainer's API, watched to its end; a published version is made stable.

    Every model of the fleet, the first one included, goes this way: a run with
    its data selection, the gate's decision on held-out real episodes, and the
    registry's record of who labelled which version, when and why.
    """
    auth = [*bearer(token), (USER_HEADER, "make-run")]
    with grpc.insecure_channel(trainer.address) as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        run = stub.SubmitRun(trainer_pb2.SubmitRunRequest(spec=spec), metadata=auth, timeout=120)
        steps = spec.params.steps
        with tqdm(total=steps, desc=f"trainer run {run.run_id} ({what})", unit="step") as bar:
            for event in stub.WatchRun(
                trainer_pb2.WatchRunRequest(run_id=run.run_id), timeout=3600
            ):
                run = event.run
                bar.update(max(0, min(run.step, steps) - bar.n))
                bar.set_postfix(state=_state(run))
        print(f"  run {run.run_id} ended {_state(run)}: {run.message}")
        if run.state == trainer_pb2.RUN_STATE_SUCCEEDED and run.published.version:
            stub.SetVersionLabel(
                trainer_pb2.SetVersionLabelRequest(
                    name=run.published.name,
                    version=run.published.version,
                    label=STABLE,
                ),
                metadata=auth,
                timeout=30,
            )
            print(f"  version {run.published.version} published as canary and promoted to stable")
        return run


def _scores(metrics: dict) -> str:
    """The validation scores a run recorded, as one line."""
    shown = [f"{k} {v:.3f}" for k, v in sorted(metrics.items()) if "auc" in k or "accuracy" in k]
    return ", ".join(shown) or "no validation scores recorded"


def _state(run: trainer_pb2.Run) -> str:
    return trainer_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()


def _grasp_run_spec(recipe: int, steps: int, description: str) -> trainer_pb2.RunSpec:
    """A grasp-model run on the simulated episodes of the train objects and the arms' episodes.

    The store also holds the sim evaluation on the held-out objects, so the sim
    data is restricted to the train object set. The scene loss is on: the
    simulated episodes carry masks (docs/results.md). The gate compares with
    stable on held-out real episodes; the first version passes it with its
    numbers recorded, since there is no stable version yet.
    """
    return trainer_pb2.RunSpec(
        recipe=recipe,
        params=trainer_pb2.TrainingParams(steps=steps, batch_size=32, weights={"scene": 1.0}),
        data=trainer_pb2.DataSelection(
            object_set="train", sim_randomization=common_pb2.RANDOMIZATION_NONE
        ),
        gate=trainer_pb2.GateSpec(enabled=True, max_regression=0.05),
        description=description,
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    base = PLANS["quick" if args.quick else "default"]
    plan = Plan(
        bootstrap_episodes=args.bootstrap_episodes or base.bootstrap_episodes,
        validation_episodes=base.validation_episodes,
        train_steps=args.train_steps or base.train_steps,
        agent_episodes=args.agent_episodes or base.agent_episodes,
        retrain_steps=base.retrain_steps,
        eval_episodes=args.eval_episodes or base.eval_episodes,
    )
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    report_dir = Path(args.reports) / time.strftime("run-%Y%m%d-%H%M%S")
    report_dir.mkdir(parents=True, exist_ok=True)
    models, store_dir = workdir / "models", workdir / "episode-store"
    print(
        f"graspfleet local fleet ({'quick' if args.quick else 'default'} run): state in {workdir}/, logs in {workdir}/logs/"
    )
    started = time.monotonic()
    fleet = Fleet(workdir)
    # One token guards every call that changes state (the trainer's, Relabel, Pause and
    # Resume); the services read it from the environment, so it stays out of `ps`.
    token = secrets.token_hex(16)
    os.environ["GRASPFLEET_AUTH_TOKEN"] = token
    try:
        print("[1/7] services", flush=True)
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
        farm = fleet.start(
            "sim-farm",
            ["sim-farm", "serve"],
            {
                "store_address": store.address,
                "planner_address": planner.address,
                "spool_dir": str(workdir / "spool"),
            },
        )

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
            },
        )

        print("[2/7] bootstrap: simulated grasps and the arms' first tries, at random", flush=True)
        bootstrap = sim_farm_pb2.CollectionSpec(
            num_episodes=plan.bootstrap_episodes,
            num_shards=2,
            max_steps=8,
            domain=common_pb2.DOMAIN_SIM,
            randomization=common_pb2.RANDOMIZATION_NONE,
            policy=Policy(kind=Policy.KIND_RANDOM),
            seed=1,
        )
        _collect(farm, bootstrap, "bootstrap", "sim collection (random, train objects)")
        held_out = sim_farm_pb2.CollectionSpec()
        held_out.CopyFrom(bootstrap)
        held_out.num_episodes, held_out.object_set, held_out.seed = (
            plan.validation_episodes,
            "sim-test",
            2,
        )
        _collect(farm, held_out, "validation", "sim collection (random, held-out objects)")
        # No model exists yet: the arms explore at random, and their labeled episodes are
        # the held-out real data the trainer's gate judges the first model on.
        agent_flags = {
            "planner_address": planner.address,
            "store_address": store.address,
            "spool_dir": str(workdir / "agent-spool"),
        }
        _run_agents(
            fleet, args.robots, {**agent_flags, "exploration": "random"}, plan.agent_episodes
        )

        print(
            f"[3/7] the first grasp model through the trainer ({plan.train_steps} steps, "
            "sim labels only)",
            flush=True,
        )
        first = _trainer_run(
            trainer,
            token,
            _grasp_run_spec(
                trainer_pb2.RECIPE_SIM_ONLY,
                plan.train_steps,
                "make run: the first model, from the simulated bootstrap",
            ),
            "sim-only",
        )
        if not first.published.version:
            raise SystemExit(f"the first model was not published: {first.message}")
        metrics = dict(first.metrics)
        predictor.wait_ready(120)
        print(f"  grasp-predictor SERVING version {first.published.version}", flush=True)

        print(
            "[4/7] CEM on the sim-only model against random grasping, held-out objects (sim)",
            flush=True,
        )
        evaluation = _evaluate(farm, plan.eval_episodes)

        print(f"[5/7] robot agents on {', '.join(args.robots)} (proxy-real arms)", flush=True)
        # ε-mix, as a fleet collects: half the commands from CEM on the model, half exploring.
        agent_flags |= {"exploration": "eps-mix", "epsilon": "0.5"}
        _run_agents(fleet, args.robots, agent_flags, plan.agent_episodes)

        print(
            "[6/7] retraining through the trainer API; the agents pick the new model up", flush=True
        )
        try:
            retrained = _trainer_run(
                trainer,
                token,
                _grasp_run_spec(
                    trainer_pb2.RECIPE_DANN,
                    plan.retrain_steps,
                    "make run: retrain on sim + the agents' real episodes",
                ),
                "DANN",
            )
        except grpc.RpcError as err:
            print(f"  the trainer refused the run: {err.code().name}: {err.details()}")
        else:
            if retrained.published.version:
                _run_agents(fleet, args.robots, agent_flags, max(2, plan.agent_episodes // 2))

        print("[7/7] report", flush=True)
        from graspfleet.v1 import episode_store_pb2
        from services.episode_store import client

        channel, stub = client.connect(store.address)
        with channel:
            stats = stub.Stats(episode_store_pb2.StatsRequest())
            table = report.format_table(report.summary_rows(stats), evaluation)
            report.success_plot(stub, args.robots, report_dir / "success_over_time.png")
            drawn = report.episode_pictures(stub, args.robots, report_dir)
        recorded = report.prometheus_table(fleet.prometheus) if fleet.prometheus else ""
        if recorded:
            table += f"\n\n{recorded}"
        links = "\n".join(f"![{p.stem}]({p.name})" for p in drawn)
        (report_dir / "summary.md").write_text(
            f"# graspfleet run\n\nepisodes in the store: {stats.episodes} ({stats.steps} steps)\n\n"
            f"first model (version {first.published.version}): {_scores(metrics)}\n\n{table}\n\n"
            f"![success over time](success_over_time.png)\n\n{links}\n"
        )
        print(f"\n{table}\n")
        print(
            f"episodes in the store: {stats.episodes} ({stats.steps} steps); report in {report_dir}/"
        )
        print(f"total time {time.monotonic() - started:.0f} s")
    finally:
        fleet.stop()
    return 0
