"""`python -m experiments.levers`: exploration data and object diversity, on validation (make levers).

The protocol is experiments/levers/protocol.py. Stages are cached under --root
keyed by their settings (collections, models, evaluations), so a stopped run
resumes; the report (docs/results/levers-exploration.{json,md}) is rewritten
once every row is scored.
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
from experiments.levers.protocol import (
    COMPACT_TRAINING_ARM,
    QUICK,
    ROWS,
    VALIDATION_ARMS,
    Settings,
)
from experiments.sim2real.data import collect_complete
from experiments.sim2real.evaluate import Evaluations, Job, Scored, outcomes
from experiments.sim2real.report import commit
from experiments.sim2real.stages import Stages, log
from graspfleet.v1 import common_pb2, episode_store_pb2, sim_farm_pb2
from models.grasp_success.training import TrainSpec, train
from models.scoring import difference_text, rate_text, seeded_difference, wilson

Policy = sim_farm_pb2.CollectionPolicy
Summary = episode_store_pb2.EpisodeSummary
REPORT = "levers"


def collections(settings: Settings) -> dict[str, sim_farm_pb2.CollectionSpec]:
    """Random and noisy-oracle episodes on the training objects, random on the sim-test ones."""

    def spec(kind: int, episodes: int, object_set: str, seed: int) -> sim_farm_pb2.CollectionSpec:
        return sim_farm_pb2.CollectionSpec(
            num_episodes=episodes,
            num_shards=settings.shards,
            max_steps=settings.max_steps,
            domain=common_pb2.DOMAIN_SIM,
            randomization=common_pb2.RANDOMIZATION_NONE,
            object_set=object_set,
            policy=Policy(kind=kind),
            render_masks=True,
            skip_stored=True,
            seed=seed,
        )

    s = settings
    compact = spec(Policy.KIND_RANDOM, s.episodes // 2, "", s.data_seed + 3)
    compact.arm_config_yaml = COMPACT_TRAINING_ARM.read_text()
    return {
        "random": spec(Policy.KIND_RANDOM, s.episodes, "train", s.data_seed),
        "compact": compact,
        "noisy-oracle": spec(Policy.KIND_NOISY_ORACLE, s.episodes // 2, "train", s.data_seed + 1),
        "validation": spec(Policy.KIND_RANDOM, s.validation_episodes, "sim-test", s.data_seed + 2),
    }


def gather(settings: Settings, root: Path, stages: Stages) -> dict[str, list[Summary]]:
    """Each collection's labeled episodes (collected first where missing), in id order."""
    specs = collections(settings)
    found = collect_complete(root, settings.shards, stages, specs, "levers")
    return found


def training_set(row: str, data: dict[str, list[Summary]], settings: Settings) -> list[Summary]:
    """A row's training episodes (the protocol's docstring)."""
    if row == "random-data":
        return data["random"][: settings.episodes]
    half = settings.episodes // 2
    other = "noisy-oracle" if row == "mixed-data" else "compact"
    return [*data["random"][:half], *data[other][:half]]


def grasp_model(
    row: str, seed: int, data: dict[str, list[Summary]], settings: Settings, root: Path, stages
) -> dict:
    """The grasp model of `row` for `seed`, trained once (a cached stage): its path and metrics."""
    spec = TrainSpec(
        recipe=f"levers:{row}",
        steps=settings.grasp_steps,
        batch_size=32,
        seed=seed,
        scene_weight=settings.scene_weight,
        sim_fraction=1.0,
        eval_every=settings.eval_every,
        keep_best=True,
    )
    episodes = training_set(row, data, settings)
    base = root / "models" / f"{row}-s{seed}"

    def work() -> dict:
        result = train(
            spec,
            str(root / "data" / "store"),
            episodes,
            data["validation"],
            base,
            progress_bar=False,
        )
        return {
            "path": str(result.path),
            "metrics": result.metrics,
            "train_episodes": len(episodes),
            "train_successes": sum(e.label.success for e in episodes),
        }

    identity = [len(episodes), episodes[0].episode_id, episodes[-1].episode_id]
    settings_key = {"spec": repr(spec), "data": identity, "validation": len(data["validation"])}
    return stages.run(f"grasp-{row}-s{seed}", settings_key, work)


PLANNED = {
    "levers-validation": ("mixed-data", "random-data"),
    "levers-compact": ("compact-data", "random-data"),
}


def report(settings: Settings, data, trained: dict, scores: dict, command: str) -> dict:
    """Every arm's rows, seeds, pooled rates and planned differences."""
    return {
        "protocol": "experiments/levers/protocol.py",
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
                [PLANNED[evaluation]],
            )
            for evaluation, arm in VALIDATION_ARMS.items()
        },
        "command": command,
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown(result: dict) -> str:
    """The report as Markdown: each arm's contenders, planned difference and servoing thresholds."""
    lines = [
        "# Levers on closed-loop grasp success (validation arms only)",
        "",
        f"`{result['command']}` at {result['commit']}, {result['date']}. "
        f"Protocol: {result['protocol']}.",
    ]
    for arm in result["arms"].values():
        lines += arm_markdown(arm)
    servo = result.get("servoing")
    if servo:
        lines += [
            "",
            f"## Servoing thresholds: {servo['row']} on {servo['arm']}",
            "",
            "| close_ratio | raise_ratio | pooled [Wilson 95%] | minus the default 0.9 |",
            "|---|---|---|---|",
        ]
        for ratio, t in servo["thresholds"].items():
            lines.append(
                f"| {ratio} | {t['raise_ratio']} | {rate_text(t['pooled'])} | "
                f"{difference_text(t['minus_default'])} |"
            )
    return "\n".join(lines) + "\n"


DEFAULT_CLOSE_RATIO = 0.9
DEFAULT_RAISE_RATIO = 0.5
SERVOING_ARM = "levers-compact"


def servoing(
    settings: Settings, trained: dict, scores: dict, evaluations: Evaluations, result: dict
) -> dict:
    """Lever 3: the compact arm's best row again, at each close threshold (the protocol)."""
    rows = result["arms"][SERVOING_ARM]["rows"]
    best = max(ROWS, key=lambda r: (rows[r]["pooled"]["successes"], r == "random-data"))
    names = [f"{best}-s{s}" for s in settings.seeds]
    contenders = {
        ratio: [Scored(f"{n}-close{round(ratio * 100)}", trained[n]["path"]) for n in names]
        for ratio in settings.servoing_close_ratios
    }
    arm = VALIDATION_ARMS[SERVOING_ARM].read_text()
    jobs = [
        Job(
            f"levers-servo{round(ratio * 100)}",
            arm,
            scored,
            close_ratio=ratio,
            raise_ratio=min(ratio, DEFAULT_RAISE_RATIO),
        )
        for ratio, scored in contenders.items()
    ]
    found = evaluations.run(jobs)
    default = [outcomes(scores[SERVOING_ARM][n]) for n in names]
    thresholds = {}
    for job in jobs:
        per_seed = [outcomes(record) for record in found[job.evaluation_id].values()]
        successes = sum(r["successes"] for r in found[job.evaluation_id].values())
        episodes = sum(r["episodes"] for r in found[job.evaluation_id].values())
        thresholds[str(job.close_ratio)] = {
            "raise_ratio": job.raise_ratio,
            "pooled": wilson(successes, episodes).as_dict(),
            "minus_default": seeded_difference(per_seed, default).as_dict(),
            "servoing": {
                name: record.get("servoing", {})
                for name, record in found[job.evaluation_id].items()
            },
        }
    return {
        "row": best,
        "arm": SERVOING_ARM,
        "default": {"close_ratio": DEFAULT_CLOSE_RATIO, "raise_ratio": DEFAULT_RAISE_RATIO},
        "thresholds": thresholds,
    }


def run(settings: Settings, root: Path, out: Path, command: str) -> dict:
    """Collects, trains and scores every row and seed, then writes the report; returns it."""
    stages = Stages(root)
    data = gather(settings, root, stages)
    trained = {
        f"{row}-s{seed}": grasp_model(row, seed, data, settings, root, stages)
        for row in ROWS
        for seed in settings.seeds
    }
    evaluations = Evaluations(settings, root, stages)
    scored = [Scored(name, t["path"]) for name, t in trained.items()]
    jobs = [
        Job(evaluation, arm.read_text(), scored, baselines=True)
        for evaluation, arm in VALIDATION_ARMS.items()
    ]
    scores = evaluations.run(jobs)
    result = report(settings, data, trained, scores, command)
    result["servoing"] = servoing(settings, trained, scores, evaluations, result)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{REPORT}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{REPORT}.md").write_text(markdown(result))
    log(f"report: {out / REPORT}.md")
    return result


def main(argv: list[str] | None = None) -> int:
    """Runs the protocol (or its tiny --quick settings); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m experiments.levers", description=__doc__)
    parser.add_argument("--root", default="var/levers", help="stages, data and models")
    parser.add_argument("--out", default="docs/results", help="the report's folder")
    parser.add_argument("--quick", action="store_true", help="tiny settings: the pipeline only")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = "python -m experiments.levers " + " ".join(argv if argv is not None else sys.argv[1:])
    run(QUICK if args.quick else Settings(), Path(args.root), Path(args.out), command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
