"""The collection engine: a collection's plan, run shard by shard through a backend, as events.

One engine, two backends. `local` runs shards as worker processes of the farm
(local_backend.py); `kubernetes` runs each collection as an Indexed Job whose
pods run `graspfleet sim-farm shard` (kubernetes_backend.py). Both run the same
worker code on the same plan, so a collection's episodes are the same either
way; the farm sees only the events of events.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from services.common import logs
from services.common.config import ConfigError
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.events import Event
from services.sim_farm.plan import CollectionPlan

log = logs.get_logger(__name__)


class Backend(Protocol):
    """Where shards run. Calls may come from several threads."""

    name: str

    def start(self, plan: CollectionPlan) -> None:
        """Begins running every shard of `plan` (now or as room frees up)."""
        ...

    def stop(self, collection_id: str) -> None:
        """Stops the collection's shards; each ends with ShardStopped unless already ended."""
        ...

    def poll(self, timeout_s: float) -> list[Event]:
        """The events since the last call, waiting up to `timeout_s` when there are none."""
        ...

    def close(self) -> None:
        """Releases what the backend holds; what runs on its own (Jobs) runs on."""
        ...


class Collector:
    """Runs collections through one backend and yields their shards' events.

    Args:
        backend: Where the shards run.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._closing = threading.Event()
        # Held while the backend polls: closing waits for a poll in flight to return.
        self._polling = threading.Lock()

    def start(self, plan: CollectionPlan) -> None:
        """Runs every shard of the plan."""
        self.backend.start(plan)

    def stop(self, collection_id: str) -> None:
        """Stops a collection; its shards end ShardStopped (episodes already stored stay)."""
        self.backend.stop(collection_id)

    def events(self, poll_s: float = 0.5) -> Iterator[Event]:
        """Every event of every collection, as it comes, until `close`."""
        while True:
            with self._polling:
                if self._closing.is_set():
                    return
                try:
                    events = self.backend.poll(poll_s)
                except Exception:  # noqa: BLE001 - one failed poll must not end the following
                    log.exception("polling the shards failed", extra={"backend": self.backend.name})
                    events = []
                    self._closing.wait(poll_s)
            yield from events

    def close(self) -> None:
        """Ends `events` and closes the backend."""
        self._closing.set()
        with self._polling:
            self.backend.close()


def make_collector(config: SimFarmConfig, kubernetes_api=None) -> Collector:
    """The collector of `config.collection_backend`.

    Args:
        config: The farm's settings.
        kubernetes_api: A `kubernetes.client.ApiClient` to use instead of the one
            `config.k8s_api` describes (tests aim it at a local API server).

    Raises:
        ConfigError: the kubernetes backend finds no API server configuration.
    """
    if config.collection_backend == "kubernetes":
        from kubernetes.config import ConfigException

        from services.common.kube import api_client
        from services.sim_farm.kubernetes_backend import KubernetesBackend

        if kubernetes_api is None:
            try:
                kubernetes_api = api_client(config.k8s_api)
            except ConfigException as err:
                raise ConfigError(
                    f"collection_backend=kubernetes, but k8s_api={config.k8s_api} finds no API "
                    f"server ({err}): run the farm in a pod with its service account token, or "
                    "give it a kubeconfig"
                ) from None
        return Collector(KubernetesBackend(config, kubernetes_api))
    from services.sim_farm.local_backend import LocalBackend

    return Collector(LocalBackend(config))
