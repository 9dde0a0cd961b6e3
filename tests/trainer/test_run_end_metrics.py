"""graspfleet_trainer_runs_ended_total counts every run's end, also of runs whose job never
started (the GraspfleetTrainingRunFailed alert reads it)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from graspfleet.v1 import trainer_pb2
from models.registry import Registry
from services.trainer.backends import JobSpec, JobStatus
from services.trainer.config import TrainerConfig
from services.trainer.runs import RunStore, spec_hash
from services.trainer.supervisor import Supervisor


def ended(recipe: str, state: str) -> float | None:
    return REGISTRY.get_sample_value(
        "graspfleet_trainer_runs_ended_total", {"recipe": recipe, "state": state}
    )


class RefusingBackend:
    """A backend whose cluster refuses every Job (RBAC, quota, a missing namespace)."""

    name = "refusing"

    def start(self, job: JobSpec) -> str:
        raise RuntimeError("jobs.batch is forbidden")

    def poll(self, handle: str) -> JobStatus:
        raise AssertionError("never started")

    def cancel(self, handle: str) -> None:
        pass

    def reap(self) -> None:
        pass


def _queue(runs: RunStore, run_id: str, recipe: int) -> None:
    spec = trainer_pb2.RunSpec(recipe=recipe, backend=RefusingBackend.name)
    run = trainer_pb2.Run(run_id=run_id, spec=spec, state=trainer_pb2.RUN_STATE_QUEUED)
    runs.create(run, spec_hash(spec), "QUEUED")


def test_failed_and_cancelled_runs_are_counted(tmp_path):
    # Every recipe's failure series exists at 0 before anything failed.
    assert ended("DANN", "FAILED") is not None
    before_failed = ended("REAL_ONLY", "FAILED")
    before_cancelled = ended("DANN", "CANCELLED") or 0.0
    config = TrainerConfig(
        store_address="127.0.0.1:9",
        store_data_dir=str(tmp_path / "episodes"),
        state_dir=str(tmp_path / "trainer"),
        model_base=str(tmp_path / "models"),
        k8s_api="off",
    )
    runs = RunStore(tmp_path / "runs.db")
    try:
        supervisor = Supervisor(
            config, runs, Registry(tmp_path / "models"), {"refusing": RefusingBackend()}
        )
        _queue(runs, "run-a", trainer_pb2.RECIPE_REAL_ONLY)
        supervisor.pass_once()
        assert runs.get("run-a").state == trainer_pb2.RUN_STATE_FAILED
        assert ended("REAL_ONLY", "FAILED") == before_failed + 1

        _queue(runs, "run-b", trainer_pb2.RECIPE_DANN)
        supervisor.cancel("run-b")
        assert ended("DANN", "CANCELLED") == before_cancelled + 1
        # An end is counted once: cancelling an ended run changes nothing.
        supervisor.cancel("run-a")
        assert ended("REAL_ONLY", "FAILED") == before_failed + 1
    finally:
        runs.close()
