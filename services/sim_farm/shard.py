"""`graspfleet sim-farm shard`: one shard of a collection, as a pod of its Indexed Job runs it.

The same worker code as a local shard (worker.run_shard), reporting to its log
instead of a queue. The exit status is what the Job controller sees: 0 when
every episode reached the store, 1 when the shard failed (its error also goes
to the termination log, which Kubernetes shows as the pod's termination
message), 143 when SIGTERM stopped it first (the Job was deleted), 2 when the
command itself is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.common import logs
from services.common.config import load_config
from services.sim_farm.config import ShardConfig
from services.sim_farm.events import Event, ShardFailed, ShardStopped
from services.sim_farm.plan import CollectionPlan, ShardJob, ShardSettings
from services.sim_farm.worker import run_shard

log = logs.get_logger(__name__)

PROG = "graspfleet sim-farm shard"
# Set by Kubernetes in every pod of an Indexed Job: the pod's completion index.
INDEX_ENV = "JOB_COMPLETION_INDEX"
STOPPED_EXIT = 128 + signal.SIGTERM
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_BYTES = 4000


def shard_job(config: ShardConfig, environ: Mapping[str, str] | None = None) -> ShardJob:
    """The shard the command runs: its plan, its index, its settings.

    Raises:
        ValueError: the plan does not parse, or no shard index is given or it is out of range.
    """
    environ = os.environ if environ is None else environ
    plan = CollectionPlan.from_json(config.plan)
    shard = config.shard
    if shard < 0:
        raw = environ.get(INDEX_ENV, "")
        if not raw.isdigit():
            raise ValueError(
                f"which shard? {INDEX_ENV}={raw!r}: Kubernetes sets it in an Indexed Job's pods; "
                "elsewhere pass --shard"
            )
        shard = int(raw)
    plan.shard_episodes(shard)  # raises for a shard the plan does not have
    settings = ShardSettings(
        store_address=config.store_address,
        planner_address=config.planner_address,
        refiner_address=config.refiner_address,
        plan_timeout_s=config.plan_timeout_s,
        spool_dir=config.spool_dir,
        spool_max_bytes=config.spool_max_bytes,
        upload_stall_s=config.upload_stall_s,
    )
    return ShardJob(plan, shard, settings)


class _LogProgress:
    """Progress reported as log lines: nobody reads a pod's queue; its log is kept."""

    def put(self, event: Event) -> None:
        log.info(type(event).__name__, extra=dataclasses.asdict(event))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the shard; returns the exit status (see the module docstring)."""
    config = load_config(ShardConfig, PROG, argv)
    logs.configure_logging("sim-farm-shard", config.log_level, config.log_format)
    try:
        job = shard_job(config)
    except (ValueError, IndexError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    # Deleting the Job sends SIGTERM: end after the current episode, not in the middle of one.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info(
        "shard starting",
        extra={
            "collection": job.plan.collection_id,
            "shard": job.shard,
            "episodes": len(job.episodes),
        },
    )
    ending = run_shard(job, _LogProgress(), stop)
    if isinstance(ending, ShardFailed):
        if config.termination_log:
            message = ending.error.encode()[:TERMINATION_MESSAGE_BYTES]
            Path(config.termination_log).write_bytes(message)
        return 1
    if isinstance(ending, ShardStopped):
        return STOPPED_EXIT
    return 0
