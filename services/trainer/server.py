"""The trainer's gRPC service: `create_server(config)` and `main()`."""

from __future__ import annotations

import threading
from pathlib import Path

from graspfleet.v1 import trainer_pb2, trainer_pb2_grpc
from models.registry import Registry
from services.common import logs
from services.common.auth import PEOPLE, BearerAuth, authorize
from services.common.config import load_config
from services.common.errors import ResourceExhausted
from services.common.server import ServiceServer, stop_signals
from services.episode_store.client import connect
from services.trainer.backends import JobBackend, LocalBackend
from services.trainer.config import TrainerConfig
from services.trainer.rollout import AutoRetrain, Periodic, Rollout
from services.trainer.runs import RunStore
from services.trainer.trainer import Trainer

log = logs.get_logger(__name__)

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
DATABASE = "trainer.sqlite"


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    """Adapts gRPC calls to `Trainer`; mutating calls need the bearer token."""

    def __init__(self, trainer: Trainer, auth: BearerAuth) -> None:
        self.trainer = trainer
        self.auth = auth
        self._watchers = threading.BoundedSemaphore(trainer.config.max_watchers)

    def SubmitRun(self, request, context):
        """Accepts a run (a retry under the same run id returns the stored one)."""
        by = self.auth.check(context)
        return self.trainer.submit(request.spec, request.run_id, by)

    def GetRun(self, request, context):
        """The run with its spec, state and progress."""
        return self.trainer.get(request.run_id)

    def ListRuns(self, request, context):
        """A page of runs, newest first, optionally of one state."""
        return self.trainer.list(request)

    def WatchRun(self, request, context):
        """Streams the run's state, then every change until it ends or the caller hangs up."""
        authorize(context, PEOPLE, "watch runs")
        if not self._watchers.acquire(blocking=False):
            raise ResourceExhausted(
                f"{self.trainer.config.max_watchers} runs are being watched already "
                "(max_watchers); watch again later, or poll GetRun, which holds no thread"
            )
        try:
            yield from self.trainer.watch(request.run_id, context.is_active)
        finally:
            self._watchers.release()

    def CancelRun(self, request, context):
        """Cancels a queued or running run and stops its job; an ended run is left as it is."""
        self.auth.check(context)
        return self.trainer.cancel(request.run_id)

    def ListModelVersions(self, request, context):
        """The model's published versions with their labels and metadata."""
        return trainer_pb2.ListModelVersionsResponse(versions=self.trainer.versions(request.name))

    def SetVersionLabel(self, request, context):
        """Moves a label to a published version."""
        by = self.auth.check(context)
        return self.trainer.set_label(request.name, request.version, request.label, by)

    def RollbackVersionLabel(self, request, context):
        """Moves a label back to the version that held it before the current one."""
        by = self.auth.check(context)
        return self.trainer.rollback(request.name, request.label, by)

    def ListLabelChanges(self, request, context):
        """The model's label history, oldest first."""
        return trainer_pb2.ListLabelChangesResponse(
            changes=self.trainer.label_changes(request.name, request.label)
        )


def _backends(config: TrainerConfig, kubernetes_api) -> dict[str, JobBackend]:
    backends: dict[str, JobBackend] = {"local": LocalBackend(config.cancel_grace_s)}
    if kubernetes_api is None and config.k8s_api != "off":
        from kubernetes.config import ConfigException

        from services.common.kube import api_client

        try:
            kubernetes_api = api_client(config.k8s_api)
        except ConfigException as err:
            log.warning("kubernetes backend unavailable", extra={"error": str(err)})
    if kubernetes_api is not None:
        from services.trainer.kubernetes_backend import KubernetesBackend

        backends["kubernetes"] = KubernetesBackend(config, kubernetes_api)
    return backends


def create_server(config: TrainerConfig, *, kubernetes_api=None) -> ServiceServer:
    """Starts the trainer; SERVING once runs left by a previous trainer are re-adopted.

    Args:
        config: The trainer's settings.
        kubernetes_api: A `kubernetes.client.ApiClient` to use instead of the one
            `config.k8s_api` describes (tests aim it at a local API server).
    """
    auth = BearerAuth(config.auth_token, "trainer", "submit and cancel runs and move model labels")
    for folder in (Path(config.state_dir), config.runs_path, Path(config.model_base)):
        folder.mkdir(parents=True, exist_ok=True)
    channel, store = connect(config.store_address, config.max_message_bytes)
    runs = RunStore(Path(config.state_dir) / DATABASE)
    trainer = Trainer(
        config, runs, Registry(Path(config.model_base)), _backends(config, kubernetes_api), store
    )
    loops = []
    if config.rollout_interval_s > 0:
        loops.append(Periodic("trainer-rollout", config.rollout_interval_s, Rollout(trainer).check))
    if config.auto_retrain_enabled:
        retrain = AutoRetrain(trainer)
        loops.append(Periodic("trainer-retrain", config.auto_retrain_interval_s, retrain.check))

    def stop() -> None:
        trainer.stopping.set()
        for loop in loops:
            loop.stop()
        trainer.supervisor.stop()
        channel.close()
        runs.close()

    servicer = TrainerServicer(trainer, auth)
    server = ServiceServer(
        "trainer",
        config,
        lambda grpc_server: trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, grpc_server),
        [SERVICE_NAME],
        on_stop=stop,
    )
    try:
        trainer.supervisor.start()
        for loop in loops:
            loop.start()
    except Exception:
        server.stop(grace_s=0)
        raise
    server.set_serving(True)
    log.info("trainer ready", extra={"backends": sorted(trainer.backends)})
    return server


def main(argv: list[str] | None = None) -> None:
    """`graspfleet trainer serve`: serves until SIGTERM; running jobs carry on without it."""
    config = load_config(TrainerConfig, "graspfleet trainer serve", argv)
    logs.configure_logging("trainer", config.log_level, config.log_format)
    stop = stop_signals()  # before the port file: a SIGTERM from then on drains
    create_server(config).wait(stop=stop)
