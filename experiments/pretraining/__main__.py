"""`python -m experiments.pretraining`: sim pretraining and steps on the proxy-real domain.

The protocol is experiments/pretraining/protocol.py. Stages are cached under
--root keyed by their settings (collections, models, evaluations), so a stopped
run resumes. The report (docs/results/pretraining.{json,md}) is rewritten after
each phase: the rows scored so far, and the rows still to come named as such.
"""

from __future__ import annotations

# Before anything imports TensorFlow or PyBullet: their start-up lines stay off the terminal.
from services.common import quiet

quiet.install()

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from experiments.arms import arm_markdown, arm_report
from experiments.pretraining.protocol import PLANNED, QUICK, ROWS, VALIDATION_ARMS, Settings
from experiments.sim2real.data import REAL_ARM, collect_complete
from experiments.sim2real.evaluate import Evaluations, Job, Scored
from experiments.sim2real.report import commit
from experiments.sim2real.stages import Stages, log
from graspfleet.v1 import common_pb2, episode_store_pb2, sim_farm_pb2
from models.episodes.selection import split_episodes
from models.grasp_success.training import TrainSpec, train

Policy = sim_farm_pb2.CollectionPolicy
Summary = episode_store_pb2.EpisodeSummary
REPORT = "pretraining"
BATCH_SIZE = 32


def collections(settings: Settings) -> dict[str, sim_farm_pb2.CollectionSpec]:
    """Plain sim on the training objects, sim on the sim-test ones, proxy-real on real-train."""
    s = settings
    common = dict(
        num_shards=s.shards,
        max_steps=s.max_steps,
        policy=Policy(kind=Policy.KIND_RANDOM),
        skip_stored=True,
    )
    sim = dict(
        domain=common_pb2.DOMAIN_SIM,
        randomization=common_pb2.RANDOMIZATION_NONE,
        render_masks=True,
        **common,
    )
    return {
        "sim": sim_farm_pb2.CollectionSpec(
            num_episodes=s.sim_episodes, object_set="train", seed=s.data_seed, **sim
        ),
        "sim-validation": sim_farm_pb2.CollectionSpec(
            num_episodes=s.sim_validation_episodes,
            object_set="sim-test",
            seed=s.data_seed + 1,
            **sim,
        ),
        "real": sim_farm_pb2.CollectionSpec(
            num_episodes=s.real_episodes,
            arm_config_yaml=REAL_ARM.read_text(),
            seed=s.data_seed + 2,
            **common,
        ),
    }


def gather(settings: Settings, root: Path, stages: Stages) -> dict[str, list[Summary]]:
    """The training and validation episodes of every row (collected first where missing)."""
    specs = collections(settings)
    found = collect_complete(root, settings.shards, stages, specs, "pretraining")
    real, real_validation = split_episodes(
        found["real"], settings.real_validation_fraction, settings.data_seed
    )
    return {
        "sim": found["sim"],
        "sim-validation": found["sim-validation"],
        "real": real,
        "real-validation": real_validation,
    }


def grasp_model(
    row: str, seed: int, data: dict[str, list[Summary]], settings: Settings, root: Path, stages
) -> dict:
    """A row's model for `seed` (the protocol's docstring); sim-then-real trains sim-only first."""
    s = settings
    initial = None
    if row == "sim-then-real":
        initial = grasp_model("sim-only", seed, data, s, root, stages)["weights"]
    simulated = row == "sim-only"
    spec = TrainSpec(
        recipe=f"pretraining:{row}",
        steps=s.grasp_steps * (2 if row == "real-only" else 1),
        batch_size=BATCH_SIZE,
        seed=seed,
        # A fine-tune keeps its parent's network (scene head included) to load its weights;
        # on real samples alone the scene loss counts nothing.
        scene_weight=s.scene_weight if row != "real-only" else 0.0,
        sim_fraction=1.0 if simulated else 0.0,
        eval_every=s.eval_every,
        keep_best=True,
    )
    episodes = data["sim"] if simulated else data["real"]
    validation = data["sim-validation"] if simulated else data["real-validation"]
    name = f"{row}-s{seed}"
    base = root / "models" / name

    def work() -> dict:
        result = train(
            spec,
            str(root / "data" / "store"),
            episodes,
            validation,
            base,
            progress_bar=False,
            initial_weights=initial,
        )
        weights = base / f"{name}.weights.h5"
        result.model.save_weights(str(weights))
        return {
            "path": str(result.path),
            "weights": str(weights),
            "metrics": result.metrics,
            "train_episodes": len(episodes),
            "validation_episodes": len(validation),
            "steps_per_s": result.steps_per_s,
        }

    identity = [[len(e), e[0].episode_id, e[-1].episode_id] for e in (episodes, validation)]
    settings_key = {"spec": repr(spec), "data": identity, "initial": initial}
    return stages.run(f"grasp-{name}", settings_key, work)


def decision(result: dict) -> str:
    """The protocol's rule: sim-then-real if its pooled success over both arms beats real-only's."""
    arms = result["arms"].values()
    if any("real-only" not in a["rows"] or "sim-then-real" not in a["rows"] for a in arms):
        return "undecided: real-only or sim-then-real not yet scored"
    total = {
        row: sum(a["rows"][row]["pooled"]["successes"] for a in arms)
        for row in ("sim-then-real", "real-only")
    }
    winner = "sim-then-real" if total["sim-then-real"] > total["real-only"] else "real-only"
    return f"{winner} (successes over both arms: {total})"


def report(settings: Settings, data, trained: dict, scores: dict, command: str) -> dict:
    """The JSON report: settings, data, every arm's rows and differences, and the decision."""
    result = {
        "protocol": "experiments/pretraining/protocol.py",
        "settings": settings.as_dict(),
        "data": {
            name: {"episodes": len(e), "successes": sum(x.label.success for x in e)}
            for name, e in data.items()
        },
        "arms": {
            evaluation: arm_report(
                arm,
                {row: [f"{row}-s{s}" for s in settings.seeds] for row in ROWS},
                trained,
                scores[evaluation],
                list(PLANNED),
            )
            for evaluation, arm in VALIDATION_ARMS.items()
        },
        "command": command,
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
    result["decision"] = decision(result)
    return result


def markdown(result: dict) -> str:
    """The report as the markdown table docs/results.md cites."""
    lines = [
        "# Sim pretraining and steps on the proxy-real domain (validation arms only)",
        "",
        f"`{result['command']}` at {result['commit']}, {result['date']}. "
        f"Protocol: {result['protocol']}.",
    ]
    for arm in result["arms"].values():
        lines += arm_markdown(arm)
    lines += ["", f"Decision: {result['decision']}"]
    return "\n".join(lines) + "\n"


def score(settings: Settings, trained: dict, evaluations: Evaluations) -> dict:
    """Every trained model, random and the oracle on each validation arm."""
    scored = [Scored(name, t["path"]) for name, t in trained.items()]
    jobs = [
        Job(evaluation, arm.read_text(), scored, baselines=True)
        for evaluation, arm in VALIDATION_ARMS.items()
    ]
    return evaluations.run(jobs)


def write(result: dict, out: Path) -> None:
    """Writes the report's JSON and markdown into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{REPORT}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{REPORT}.md").write_text(markdown(result))
    log(f"report: {out / REPORT}.md")


def run(settings: Settings, root: Path, out: Path, command: str) -> dict:
    """Phase by phase: the pretrained rows first, scored and reported; then real-only."""
    stages = Stages(root)
    data = gather(settings, root, stages)
    evaluations = Evaluations(settings, root, stages)
    trained: dict[str, dict] = {}
    for phase in (("sim-only", "sim-then-real"), ("real-only",)):
        for row in phase:
            for seed in settings.seeds:
                trained[f"{row}-s{seed}"] = grasp_model(row, seed, data, settings, root, stages)
        result = report(settings, data, trained, score(settings, trained, evaluations), command)
        write(result, out)
    return result


def main(argv: list[str] | None = None) -> int:
    """Runs the experiment (resuming what is cached) and writes its report."""
    parser = argparse.ArgumentParser(prog="python -m experiments.pretraining", description=__doc__)
    parser.add_argument("--root", default="var/pretraining", help="stages, data and models")
    parser.add_argument("--out", default="docs/results", help="the report's folder")
    parser.add_argument("--quick", action="store_true", help="tiny settings: the pipeline only")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = "python -m experiments.pretraining " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    run(QUICK if args.quick else Settings(), Path(args.root), Path(args.out), command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
