"""Closed-loop scores of the table's models, and the gap decomposition, with the product's evaluator.

Every grasp model is linked into one evaluation model repository under a
version number fixed on first use (versions.json), so a resumed run serves the
same model under the same version. The main evaluation runs every model, random
exploration and the oracle on the proxy-real arm grasping the real-test objects;
the gap decomposition runs the sim-only model with none, then each one, of the
proxy-real factors switched on, on the same scenes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from experiments.sim2real.protocol import PROTOCOL_VERSION, Settings
from experiments.sim2real.stages import Stages, log
from services.evaluation.closed_loop import Contender, EvaluationSpec, evaluate
from services.fleet.evaluation import local_fleet

EVALUATION_ARM = Path(__file__).parents[2] / "robots" / "evaluation" / "proxy-real-test.yaml"
GRASP_MODEL = "grasp_success"
RCAN_MODEL = "rcan"


@dataclass(frozen=True)
class Scored:
    """A model to score: its contender name, exported version folder, and RCAN generator."""

    name: str
    path: str
    rcan_path: str = ""


class Evaluations:
    """Runs evaluations into `<root>/eval`, each contender's outcomes cached as a stage."""

    def __init__(self, settings: Settings, root: Path, stages: Stages) -> None:
        self.settings = settings
        self.root = root / "eval"
        self.stages = stages
        self.models = self.root / "models"
        self.refiners = self.root / "refiners"
        self.registry = self.root / "versions.json"

    def _version(self, path: str, model: str, base: Path) -> int:
        """The evaluation repository's version of an exported folder (linked on first use)."""
        registry = json.loads(self.registry.read_text()) if self.registry.exists() else {}
        versions = registry.setdefault(model, {})
        if path not in versions:
            versions[path] = len(versions) + 1
            self.registry.parent.mkdir(parents=True, exist_ok=True)
            self.registry.write_text(json.dumps(registry, indent=2))
        version = versions[path]
        link = base / model / str(version)
        link.parent.mkdir(parents=True, exist_ok=True)
        # Relative, so the experiment's folder can move (or be linked from elsewhere).
        target = os.path.relpath(Path(path).resolve(), link.parent.resolve())
        if link.is_symlink() and os.readlink(link) != target:
            link.unlink()  # a link, never a model: the model stays where it was trained
        if not link.is_symlink():
            os.symlink(target, link)
        return version

    def arm(self, factors: tuple[str, ...] | None) -> str:
        """The evaluation arm's YAML, with only `factors` of the proxy-real domain (None: all)."""
        text = EVALUATION_ARM.read_text()
        if factors is None:
            return text
        arm = yaml.safe_load(text)
        arm["proxy_real_factors"] = list(factors)
        return yaml.safe_dump(arm, sort_keys=False)

    def spec(self, evaluation_id: str, arm_yaml: str) -> EvaluationSpec:
        """The evaluation's scenes.

        Its id, which names the store's collections, carries the protocol version: a
        new protocol never resumes an older one's episodes.
        """
        s = self.settings
        return EvaluationSpec(
            f"{evaluation_id}-p{PROTOCOL_VERSION}",
            arm_yaml,
            scenes=s.scenes,
            seed=s.scene_seed,
            shards=s.shards,
            max_steps=s.max_steps,
        )

    def contenders(self, job: Job) -> list[Contender]:
        """Random and the oracle (with `baselines`), then each model behind its version."""
        scored, baselines = job.scored, job.baselines
        servoing = {"close_ratio": job.close_ratio, "raise_ratio": job.raise_ratio}
        contenders = []
        if baselines:
            contenders += [Contender("random", "random"), Contender("oracle", "oracle")]
        for model in scored:
            version = self._version(model.path, GRASP_MODEL, self.models)
            if model.rcan_path:
                rcan = self._version(model.rcan_path, RCAN_MODEL, self.refiners)
                contenders.append(Contender(model.name, "cem", version, "rcan", rcan, **servoing))
            else:
                contenders.append(Contender(model.name, "cem", version, **servoing))
        return contenders

    def run(self, jobs: list[Job]) -> dict[str, dict]:
        """Scores every job's contenders; {evaluation id: {contender name: outcome record}}.

        Contenders scored before are read from their stages; the rest run in one
        local evaluation fleet, whatever their evaluation's arm.
        """
        results: dict[str, dict] = {job.evaluation_id: {} for job in jobs}
        todo: list[tuple[str, EvaluationSpec, Contender, dict]] = []
        for job in jobs:
            spec = self.spec(job.evaluation_id, job.arm_yaml)
            settings = {"spec": repr(spec), "v": 1}
            for contender in self.contenders(job):
                stage = f"eval-{job.evaluation_id}-{contender.name}"
                done = self.stages.done(stage, _key(settings, contender))
                if done is None:
                    todo.append((job.evaluation_id, spec, contender, settings))
                else:
                    results[job.evaluation_id][contender.name] = done
        if not todo:
            return results
        versions = sorted({c.model_version for _, _, c, _ in todo if c.model_version})
        refiner = self.refiners if any(c.transform for _, _, c, _ in todo) else None
        with local_fleet(
            self.root / "fleet",
            self.models,
            versions,
            refiner_base=refiner,
            workers=self.settings.shards,
        ) as fleet:
            for evaluation_id, spec, contender, settings in todo:

                def work(spec=spec, contender=contender) -> dict:
                    (result,) = evaluate(fleet.farm_address, fleet.store_address, spec, [contender])
                    return {
                        **result.rate.as_dict(),
                        "outcomes": {str(k): v for k, v in sorted(result.outcomes.items())},
                        "servoing": result.servoing,
                        "seconds": round(result.seconds, 1),
                    }

                stage = f"eval-{evaluation_id}-{contender.name}"
                outcome = self.stages.run(stage, _key(settings, contender), work)
                results[evaluation_id][contender.name] = outcome
                log(
                    f"  {evaluation_id} {contender.name}: "
                    f"{outcome['successes']}/{outcome['episodes']}"
                )
        return results


@dataclass(frozen=True)
class Job:
    """One evaluation: its id, arm, the models to score, and whether the baselines run too."""

    evaluation_id: str
    arm_yaml: str
    scored: list[Scored]
    baselines: bool = False
    close_ratio: float = 0.0  # the models' servoing thresholds; 0: the planner's own
    raise_ratio: float = 0.0


def _key(settings: dict, contender: Contender) -> dict:
    """A contender's cache key: its fields, those at their defaults left out.

    Adding a field (the servoing thresholds) then keeps every earlier evaluation's key.
    """
    fields = [
        f"{f.name}={getattr(contender, f.name)!r}"
        for f in dataclasses.fields(contender)
        if f.name not in ("close_ratio", "raise_ratio") or getattr(contender, f.name)
    ]
    return {**settings, "contender": f"Contender({', '.join(fields)})"}


def outcomes(record: dict) -> dict[int, bool]:
    """A cached outcome record's per-scene outcomes."""
    return {int(k): bool(v) for k, v in record["outcomes"].items()}
