"""The services a closed-loop evaluation needs, as local processes on loopback.

A store for the evaluation's episodes, a grasp predictor serving exactly the
versions under evaluation, the servo-planner, the refiner when a contender
transforms its images, and the sim-farm whose workers run the shards. The
planner gets a budget no control step reaches on a loaded machine: an
evaluation scores the model and CEM, not how busy the machine was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.fleet.process import Fleet

EVALUATION_BUDGET_MS = 30_000


@dataclass(frozen=True)
class LocalEvaluationFleet:
    """Addresses of a running local evaluation fleet."""

    store_address: str
    farm_address: str
    store_dir: Path


@contextlib.contextmanager
def local_fleet(
    workdir: str | Path,
    model_base: str | Path,
    versions: Sequence[int],
    *,
    refiner_base: str | Path | None = None,
    workers: int = 2,
) -> Iterator[LocalEvaluationFleet]:
    """Starts the evaluation's services; stops them on exit.

    Args:
        workdir: Holds the store (kept between runs: an evaluation resumes from it),
            the spool and the logs.
        model_base: Grasp model repository (`<base>/grasp_success/<version>/`).
        versions: The grasp model versions to serve; empty when only random or
            oracle contenders run.
        refiner_base: Refiner model repository, for contenders with a transform.
        workers: Shards running at once.
    """
    workdir = Path(workdir)
    fleet = Fleet(workdir)
    try:
        store = fleet.start(
            "episode-store", ["store", "serve"], {"data_dir": str(workdir / "store")}
        )
        farm_flags = {
            "store_address": store.address,
            "spool_dir": str(workdir / "spool"),
            "workers": str(workers),
            "plan_timeout_s": str(EVALUATION_BUDGET_MS / 1000 + 30),
        }
        if versions:
            predictor = fleet.start(
                "grasp-predictor",
                ["predictor", "serve"],
                {
                    "model_base_path": str(model_base),
                    "specific_versions": ",".join(str(v) for v in versions),
                    "poll_interval_s": "5",
                },
            )
            planner = fleet.start(
                "servo-planner",
                ["planner", "serve"],
                {"predictor_address": predictor.address, "budget_ms": str(EVALUATION_BUDGET_MS)},
            )
            farm_flags["planner_address"] = planner.address
        if refiner_base is not None:
            refiner = fleet.start(
                "refiner", ["refiner", "serve"], {"model_base_path": str(refiner_base)}
            )
            farm_flags["refiner_address"] = refiner.address
        farm = fleet.start("sim-farm", ["sim-farm", "serve"], farm_flags)
        yield LocalEvaluationFleet(store.address, farm.address, workdir / "store")
    finally:
        fleet.stop()
