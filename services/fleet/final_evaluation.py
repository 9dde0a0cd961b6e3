"""The run's last word: its stable version on the real-test arm, beside random and the oracle.

The flywheel's own numbers are its arms' grasps on the real-train objects. The
run ends with a short closed-loop evaluation of the version its arms finished
on (stable) on robots/evaluation/proxy-real-test.yaml, the real-test objects no
model trains on, with random exploration and the oracle on the very same scenes:
the product's evaluator, through the run's own sim-farm, planner and predictor.
Its episodes are tagged evaluation: stored unlabeled, never training data, never
a grasp the rollout counts.
"""

from __future__ import annotations

from pathlib import Path

from models.registry import STABLE, Registry
from services.evaluation import closed_loop
from services.evaluation.closed_loop import Contender, EvaluationSpec

TEST_ARM = Path(__file__).parents[2] / "robots" / "evaluation" / "proxy-real-test.yaml"
# Fixed, so that every run's stable version meets the same scenes.
SCENE_SEED = 5511


def evaluate_stable(
    farm_address: str, store_address: str, registry: Registry, model: str, scenes: int
) -> dict:
    """The stable version, random and the oracle on `scenes` paired real-test scenes.

    Returns:
        The evaluator's report (rates with Wilson intervals, paired differences, what
        the servoing did), with the version scored as "stable_version"; empty when
        the model has no stable version.

    Raises:
        RuntimeError: the stable label moved during the evaluation (the version scored
            would not be the one the run ends on).
    """
    stable = registry.labels(model).get(STABLE)
    if not stable:
        return {}
    spec = EvaluationSpec.from_file(
        f"run-test-arm-v{stable}", TEST_ARM, scenes=scenes, seed=SCENE_SEED, shards=2
    )
    contenders = [
        Contender(f"stable-v{stable}", "cem", stable),
        Contender("random", "random"),
        Contender("oracle", "oracle"),
    ]
    results = closed_loop.evaluate(farm_address, store_address, spec, contenders)
    after = registry.labels(model).get(STABLE)
    if after != stable:
        raise RuntimeError(
            f"the stable version moved from {stable} to {after} while it was being scored: "
            "the arms must be stopped before the closing evaluation"
        )
    return {"stable_version": stable, **closed_loop.report(spec, results)}
