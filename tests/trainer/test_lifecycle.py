"""Run lifecycle on the local backend: queueing, cancelling, a trainer restart, retraining."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from graspfleet.v1 import common_pb2, episode_store_pb2, trainer_pb2_grpc
from graspfleet.v1 import trainer_pb2 as S
from models.registry import Registry
from services.common.config import ConfigError
from services.fleet.process import ServiceProcess
from services.trainer import recipes
from services.trainer.backends import JOB_ENV, RUNNING, JobSpec, LocalBackend
from services.trainer.config import TrainerConfig
from services.trainer.job import files
from tests.fixtures import models
from tests.trainer.conftest import (
    AUTH,
    REAL,
    episode,
    fill,
    tiny_spec,
    trainer_stub,
    wait_for,
    watch,
)


def _pid(run: S.Run) -> int:
    return LocalBackend.parse(run.job)[0]


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _long_spec(recipe: int = S.RECIPE_REAL_ONLY, steps: int = 5000) -> S.RunSpec:
    spec = tiny_spec(recipe)
    spec.params.steps = steps
    return spec


def _training(stub, run_id: str, min_step: int = 1) -> S.Run:
    """Waits until the run's job has started and reported `min_step` steps."""

    def ready():
        run = stub.GetRun(S.GetRunRequest(run_id=run_id))
        assert run.state in (S.RUN_STATE_QUEUED, S.RUN_STATE_RUNNING), run.message
        return run if run.state == S.RUN_STATE_RUNNING and run.step >= min_step else None

    return wait_for(ready, 60, f"run {run_id} to train")


def _first_event(stub, run_id: str) -> S.RunEvent | None:
    """WatchRun's first event, or None while every watch is taken."""
    stream = stub.WatchRun(S.WatchRunRequest(run_id=run_id), timeout=10)
    try:
        return next(stream)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return None
    finally:
        stream.cancel()


def test_runs_beyond_the_concurrency_limit_queue_and_cancel_stops_the_job(start_trainer):
    server = start_trainer(max_concurrent_runs=1, max_watchers=1)
    channel, stub = trainer_stub(server)
    with channel:
        first = stub.SubmitRun(S.SubmitRunRequest(spec=_long_spec()), metadata=AUTH)
        second = stub.SubmitRun(S.SubmitRunRequest(spec=_long_spec()), metadata=AUTH)
        running = _training(stub, first.run_id)
        pid = _pid(running)
        assert not _process_gone(pid)
        queued = stub.GetRun(S.GetRunRequest(run_id=second.run_id))
        assert queued.state == S.RUN_STATE_QUEUED and not queued.job

        # A watch holds a thread while its run goes on: one at a time here (max_watchers=1).
        held = stub.WatchRun(S.WatchRunRequest(run_id=second.run_id), timeout=30)
        assert next(held).run.state == S.RUN_STATE_QUEUED
        with pytest.raises(grpc.RpcError) as busy:
            next(stub.WatchRun(S.WatchRunRequest(run_id=first.run_id), timeout=10))
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_watchers" in busy.value.details()
        held.cancel()  # the watcher leaves: its place is free again
        wait_for(lambda: _first_event(stub, first.run_id), 10, "a free watch")

        cancelled = stub.CancelRun(S.CancelRunRequest(run_id=second.run_id), metadata=AUTH)
        assert cancelled.state == S.RUN_STATE_CANCELLED and not cancelled.job
        cancelled = stub.CancelRun(S.CancelRunRequest(run_id=first.run_id), metadata=AUTH)
        assert cancelled.state == S.RUN_STATE_CANCELLED
        # Gone and reaped: no process, not even a zombie, is left of the job's group.
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 15, "the job's process to end")
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
        events = watch(stub, first.run_id)
        assert events[-1].run.state == S.RUN_STATE_CANCELLED and len(events) == 1
        assert not stub.GetRun(S.GetRunRequest(run_id=second.run_id)).job  # never started
        again = stub.CancelRun(S.CancelRunRequest(run_id=first.run_id), metadata=AUTH)
        assert again.state == S.RUN_STATE_CANCELLED and again.finished_at == cancelled.finished_at


def test_a_job_that_outlives_its_cancelled_run_publishes_nothing(start_trainer, tmp_path):
    channel, stub = trainer_stub(start_trainer(max_concurrent_runs=1))
    with channel:
        busy = stub.SubmitRun(S.SubmitRunRequest(spec=_long_spec()), metadata=AUTH)
        _training(stub, busy.run_id, min_step=0)  # holds the only slot: the next run waits
        queued = stub.SubmitRun(
            S.SubmitRunRequest(spec=tiny_spec(S.RECIPE_REAL_ONLY)), metadata=AUTH
        )
        cancelled = stub.CancelRun(S.CancelRunRequest(run_id=queued.run_id), metadata=AUTH)
        assert cancelled.state == S.RUN_STATE_CANCELLED and not cancelled.job
        stub.CancelRun(S.CancelRunRequest(run_id=busy.run_id), metadata=AUTH)
    # Its job runs anyway, as one does that a late signal has not reached yet: it trains,
    # then finds the marker the cancel left and publishes nothing.
    run_dir = tmp_path / "trainer" / "runs" / queued.run_id
    job = [sys.executable, "-m", "services.cli", "train", "job", "--run-dir", str(run_dir)]
    ended = subprocess.run(job, capture_output=True, text=True, timeout=240)
    assert ended.returncode == 0, ended.stderr[-2000:]
    result = json.loads((run_dir / files.RESULT_FILE).read_text())
    assert result["state"] == "CANCELLED", result
    assert "nothing was published" in result["message"]
    published = tmp_path / "models" / "grasp_success"
    assert not [p for p in published.iterdir() if p.name.isdigit()]


def test_cancel_stops_a_child_job_whose_proc_entry_does_not_name_it():
    # The job's /proc environment no longer carries its name (as in the instant of its exec):
    # the backend's own child is still stopped, by its process handle.
    backend = LocalBackend(cancel_grace_s=5.0, program=("sh", "-c"))
    handle = backend.start(JobSpec(name="unnamed", args=(f"exec env -u {JOB_ENV} sleep 60",)))
    environ = f"/proc/{LocalBackend.parse(handle)[0]}/environ"

    def unnamed() -> bool:
        with open(environ, "rb") as file:
            return f"{JOB_ENV}=unnamed".encode() not in file.read()

    wait_for(unnamed, 10, "the exec to drop the job's name")
    assert backend.poll(handle).state == RUNNING
    backend.cancel(handle)
    wait_for(lambda: backend.poll(handle).state != RUNNING, 10, "the job to stop")


def test_a_restarted_trainer_re_adopts_the_running_job_and_it_finishes(start_trainer):
    server = start_trainer()
    channel, stub = trainer_stub(server)
    with channel:
        spec = _long_spec(S.RECIPE_SIM_ONLY, steps=40)
        submitted = stub.SubmitRun(S.SubmitRunRequest(spec=spec), metadata=AUTH)
        # Stopped as soon as the job runs: it has its start-up and all its steps ahead of it,
        # so the restart lands mid-run however fast this machine trains.
        running = _training(stub, submitted.run_id, min_step=0)
    server.stop(grace_s=0)
    pid = _pid(running)
    assert not _process_gone(pid), "the job must outlive the trainer"

    restarted = start_trainer()  # same state dir
    channel, stub = trainer_stub(restarted)
    with channel:
        events = watch(stub, submitted.run_id)
    final = events[-1].run
    assert final.state == S.RUN_STATE_SUCCEEDED, final.message
    assert final.job == running.job and final.published.version == 1
    lines = [e.log_line for e in events]
    adopted = lines.index(f"re-adopted job {running.job} after a trainer restart")
    # Progress kept flowing to the new trainer.
    steps = [e.run.step for e in events[adopted:] if e.run.state == S.RUN_STATE_RUNNING]
    assert len(steps) > 2 and steps == sorted(steps) and events[-2].run.step == 40


def test_a_job_lost_while_the_trainer_was_down_is_failed_with_the_reason(start_trainer):
    server = start_trainer()
    channel, stub = trainer_stub(server)
    with channel:
        submitted = stub.SubmitRun(S.SubmitRunRequest(spec=_long_spec()), metadata=AUTH)
        running = _training(stub, submitted.run_id, min_step=0)  # its job has started
    server.stop(grace_s=0)
    os.killpg(_pid(running), signal.SIGKILL)  # the machine's job is lost meanwhile
    wait_for(lambda: _process_gone(_pid(running)), 10)

    channel, stub = trainer_stub(start_trainer())
    with channel:
        final = stub.GetRun(S.GetRunRequest(run_id=submitted.run_id))
    assert final.state == S.RUN_STATE_FAILED
    assert final.message.startswith(f"lost: job {running.job} ended without a result")


def test_enough_new_real_episodes_submit_an_automatic_run(tmp_path, start_trainer, store_client):
    """New real episodes retrain only while a stable version exists and no canary is under
    test; the schedule's recipe for the store's real episodes and the spec file's settings."""
    template = tmp_path / "auto.json"
    template.write_text(
        json.dumps(
            {
                "params": {"batchSize": 16, "seed": 7},
                "data": {"validationFraction": 0.25},
                "gate": {"enabled": True, "maxRegression": 0.05},
            }
        )
    )
    settings = {
        "auto_retrain_enabled": True,
        "auto_retrain_episodes": 3,
        "auto_retrain_interval_s": 0.2,
        "auto_retrain_recipe": "real_only,1000000:naive_mix",
        "auto_retrain_steps": 24,
        "auto_retrain_spec_file": str(template),
    }

    def auto_runs(stub):
        return [
            r for r in stub.ListRuns(S.ListRunsRequest()).runs if r.submitted_by == "auto-retrain"
        ]

    # A trainer whose model has no version yet: new data waits for a stable version.
    empty = tmp_path / "empty"
    server = start_trainer(
        **settings, model_base=str(empty / "models"), state_dir=str(empty / "state")
    )
    channel, stub = trainer_stub(server)
    with channel:
        time.sleep(1.0)  # the first check sets the watermark
        fill(store_client, [episode(400 + i, REAL, i % 2 == 0) for i in range(3)])
        with pytest.raises(AssertionError):
            wait_for(lambda: auto_runs(stub), 1.5)  # no stable version to improve on

    # The store must hold 6 labeled real episodes more than now before any automatic run.
    needed = labeled_real(store_client) + 6
    server = start_trainer(**settings, auto_retrain_min_episodes=needed)
    registry = Registry(tmp_path / "models")
    models.publish(tmp_path / "models", 1, bias=0.0)
    models.publish(tmp_path / "models", 2, bias=0.0)
    registry.set_label("grasp_success", 1, "stable", by="tester", reason="first")
    registry.set_label("grasp_success", 2, "canary", by="tester", reason="under test")
    channel, stub = trainer_stub(server)
    with channel:
        with pytest.raises(AssertionError):
            wait_for(lambda: auto_runs(stub), 1.0)  # existing data does not count
        fill(store_client, [episode(403 + i, REAL, i % 2 == 0) for i in range(3)])
        with pytest.raises(AssertionError):
            wait_for(lambda: auto_runs(stub), 1.5)  # a canary is under test
        registry.set_label("grasp_success", 1, "canary", by="tester", reason="rolled back")
        with pytest.raises(AssertionError):
            wait_for(lambda: auto_runs(stub), 1.5)  # 3 new, but the store lacks 3 of its minimum
        fill(store_client, [episode(406 + i, REAL, i % 2 == 0) for i in range(3)])
        (run,) = wait_for(lambda: auto_runs(stub), 10, "an automatic run")
        assert run.spec.recipe == S.RECIPE_REAL_ONLY and run.spec.params.steps == 24
        assert run.spec.params.batch_size == 16 and run.spec.params.seed == 7
        assert run.spec.data.validation_fraction == 0.25 and run.spec.gate.max_regression == 0.05
        assert f"6 new labeled real episodes, {needed} in all" in run.spec.description
        assert "REAL_ONLY by the schedule" in run.spec.description
        with pytest.raises(grpc.RpcError) as refused:
            stub.CancelRun(S.CancelRunRequest(run_id=run.run_id))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.CancelRun(S.CancelRunRequest(run_id=run.run_id), metadata=AUTH)


def labeled_real(stub) -> int:
    flt = episode_store_pb2.EpisodeFilter(domain=common_pb2.DOMAIN_REAL)
    return stub.Stats(episode_store_pb2.StatsRequest(filter=flt)).labeled


def test_the_retraining_schedule_picks_the_recipe_for_the_real_data():
    entries = recipes.schedule("REAL_ONLY, 2000:naive_mix, 500:dann")
    assert [(n, r.name) for n, r in entries] == [
        (0, "REAL_ONLY"),
        (500, "DANN"),
        (2000, "NAIVE_MIX"),
    ]
    assert recipes.scheduled(entries, 499).name == "REAL_ONLY"
    assert recipes.scheduled(entries, 500).name == "DANN"
    assert recipes.scheduled(entries, 10**6).name == "NAIVE_MIX"
    assert [r.name for _, r in recipes.schedule("dann_r")] == ["DANN_R"]
    for bad, why in (
        ("", "empty entry"),
        ("500:DANN", "below 500"),
        ("DANN,x:SIM_ONLY", "not a count"),
        ("DANN,5:NOPE", "no recipe"),
        ("DANN,5:RCAN_GENERATOR", "does not train a grasp model"),
        ("DANN,0:REAL_ONLY", "appears twice"),
    ):
        with pytest.raises(ValueError, match=why):
            recipes.schedule(bad)
    with pytest.raises(ConfigError, match="auto_retrain_recipe"):
        TrainerConfig(store_address="x:1", store_data_dir="d", auto_retrain_recipe="500:DANN")
    with pytest.raises(ConfigError, match="auto_retrain_min_episodes=-1 must not be negative"):
        TrainerConfig(store_address="x:1", store_data_dir="d", auto_retrain_min_episodes=-1)


def test_a_bad_automatic_run_spec_file_is_a_config_error(tmp_path):
    settings = {"store_address": "x:1", "store_data_dir": "d"}
    with pytest.raises(ConfigError, match="auto_retrain_spec_file"):
        TrainerConfig(**settings, auto_retrain_spec_file=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"params": {"stepz": 3}}')
    with pytest.raises(ConfigError, match="stepz"):
        TrainerConfig(**settings, auto_retrain_spec_file=str(tmp_path / "bad.json"))


def test_graspfleet_trainer_serve_runs_the_service_and_stops_on_sigterm(tmp_path, store):
    process = ServiceProcess(
        "trainer",
        ["trainer", "serve"],
        {
            "store_address": store.address,
            "store_data_dir": store.config.data_dir,
            "state_dir": str(tmp_path / "state"),
            "model_base": str(tmp_path / "models"),
            "k8s_api": "off",
            "log_format": "text",
        },
        tmp_path / "logs",
    )
    process.start(timeout_s=60)
    try:
        with grpc.insecure_channel(process.address) as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            assert not stub.ListRuns(S.ListRunsRequest()).runs
    finally:
        assert process.stop() == 0
    assert "AUTHENTICATION DISABLED" in process.log_path.read_text()
