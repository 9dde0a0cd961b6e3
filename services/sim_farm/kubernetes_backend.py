"""The Kubernetes backend: each collection an Indexed Job (kubernetes_job.py), followed by polling.

Pods write their episodes straight to the store, so progress comes from two
places, read every `poll_interval_s`: the Job's status says which shards
(completion indexes) succeeded or failed, the store's Stats for the collection
says how many episodes each shard has stored (grouped by the shard's robot id).
The pods say which shards run, and a failed pod's termination message says why
it failed. Stopping deletes the Job (its pods go with it). A farm that restarts
forgets its collections but not their Jobs: starting the same collection id
again adopts its Job.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field

import grpc
import urllib3
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from graspfleet.v1 import episode_store_pb2
from services.common import kube, logs
from services.common.errors import FailedPrecondition, Unavailable
from services.common.upstream import TLS_CA_ENV
from services.episode_store import client as store_client
from services.sim_farm import kubernetes_job as jobs
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.events import (
    Event,
    ShardCounted,
    ShardFailed,
    ShardFinished,
    ShardStarted,
    ShardStopped,
)
from services.sim_farm.plan import CollectionPlan
from services.sim_farm.worker import shard_robot_id

log = logs.get_logger(__name__)


@dataclass
class _Followed:
    """A collection whose Job is followed: what the farm has been told of it so far."""

    plan: CollectionPlan
    name: str
    stopping: bool = False
    ended: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)
    counts: dict[int, tuple[int, int]] = field(default_factory=dict)


class KubernetesBackend:
    """Runs each collection as an Indexed Job in one namespace.

    Shard pods dial the store, the planner and the refiner as the farm does: over
    TLS, trusting the CA in `config.k8s_tls_secret`, when the farm's own
    environment names a CA (GRASPFLEET_TLS_CA).

    Args:
        config: Namespace, image, command, service account, resources, poll interval.
        api: The API client (`kube.api_client(config.k8s_api)`, or one aimed at a test server).
    """

    name = "kubernetes"

    def __init__(self, config: SimFarmConfig, api: k8s.ApiClient) -> None:
        self.config = config
        self.tls = bool(os.environ.get(TLS_CA_ENV))
        self.api = api
        self.batch = k8s.BatchV1Api(api)
        self.core = k8s.CoreV1Api(api)
        self.channel, self.store = store_client.connect(config.store_address)
        self.lock = threading.Lock()
        self.followed: dict[str, _Followed] = {}
        self._wake = threading.Event()
        self._due = 0.0

    @property
    def namespace(self) -> str:
        """The namespace the collections' Jobs run in."""
        return self.config.k8s_namespace

    def start(self, plan: CollectionPlan) -> None:
        """Creates the collection's Job, or adopts the one an earlier farm created.

        Raises:
            FailedPrecondition: the API server refused the Job (permissions, quota, ...).
            Unavailable: the API server could not be reached.
        """
        job = jobs.manifest(self.config, plan, self.tls)
        name = job.metadata.name
        try:
            self.batch.create_namespaced_job(
                self.namespace, job, _request_timeout=kube.REQUEST_TIMEOUT_S
            )
            log.info("job created", extra={"job": name, "collection": plan.collection_id})
        except ApiException as err:
            if err.status != 409:
                raise FailedPrecondition(
                    f"creating Job {self.namespace}/{name}: {err.status} {err.reason}: "
                    f"{_message(err)}"
                ) from None
            self._adopt(plan, name)
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise Unavailable(f"the Kubernetes API is unreachable: {err}") from None
        with self.lock:
            self.followed[plan.collection_id] = _Followed(plan, name)
        self._wake.set()

    def _adopt(self, plan: CollectionPlan, name: str) -> None:
        existing = self.batch.read_namespaced_job(
            name, self.namespace, _request_timeout=kube.REQUEST_TIMEOUT_S
        )
        owner = (existing.metadata.annotations or {}).get(jobs.COLLECTION_ANNOTATION)
        if owner != plan.collection_id:
            raise FailedPrecondition(
                f"Job {self.namespace}/{name} exists and runs collection {owner!r}, not "
                f"{plan.collection_id!r}; delete it or choose another collection id"
            )
        # Created by an earlier farm (or an attempt whose answer was lost): the same collection.
        log.warning("job already exists; adopting it", extra={"job": name})

    def stop(self, collection_id: str) -> None:
        """Deletes the collection's Job (its pods go with it); a Job already gone is no error.

        Raises:
            FailedPrecondition: the API server refused the deletion.
            Unavailable: the API server could not be reached; the Job runs on.
        """
        with self.lock:
            followed = self.followed.get(collection_id)
        if followed is None:
            return
        followed.stopping = True
        try:
            # Background: the API server deletes the pods after the Job, without waiting.
            self.batch.delete_namespaced_job(
                followed.name,
                self.namespace,
                propagation_policy="Background",
                _request_timeout=kube.REQUEST_TIMEOUT_S,
            )
        except ApiException as err:
            if err.status != 404:
                raise FailedPrecondition(
                    f"deleting Job {self.namespace}/{followed.name}: {err.status} {err.reason}"
                ) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise Unavailable(
                f"the Kubernetes API is unreachable, Job {self.namespace}/{followed.name} runs "
                f"on; stop the collection again: {err}"
            ) from None
        log.info("job deleted", extra={"job": followed.name, "collection": collection_id})
        self._wake.set()

    def poll(self, timeout_s: float) -> list[Event]:
        """The events of every followed Job since the last look, read every poll interval."""
        wait = min(timeout_s, max(0.0, self._due - time.monotonic()))
        if self._wake.wait(wait):
            self._wake.clear()
        elif time.monotonic() < self._due:
            return []
        self._due = time.monotonic() + self.config.poll_interval_s
        with self.lock:
            followed = list(self.followed.values())
        events: list[Event] = []
        for collection in followed:
            try:
                events += self._observe(collection)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
                # Tried again at the next poll; the shards run on meanwhile.
                log.warning(
                    "cannot read the collection's Job",
                    extra={"job": collection.name, "error": str(err)},
                )
            if len(collection.ended) == collection.plan.num_shards:
                with self.lock:
                    self.followed.pop(collection.plan.collection_id, None)
        return events

    def _observe(self, collection: _Followed) -> list[Event]:
        """The collection's events since the last look: Job status, pods, then store counts."""
        cid, name = collection.plan.collection_id, collection.name
        try:
            job = self.batch.read_namespaced_job(
                name, self.namespace, _request_timeout=kube.REQUEST_TIMEOUT_S
            )
        except ApiException as err:
            if err.status != 404:
                raise
            return self._gone(collection)
        pods = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=f"{jobs.JOB_NAME_LABEL}={name}",
            _request_timeout=kube.REQUEST_TIMEOUT_S,
        ).items
        # Counted after the Job was read: a shard it calls complete has all its episodes stored.
        events: list[Event] = list(self._counts(collection))
        failures: dict[int, str] = {}
        for pod in pods:
            index = jobs.pod_index(pod)
            if index is None or index in collection.ended:
                continue
            phase = pod.status.phase if pod.status else None
            if phase == "Running" and index not in collection.started:
                collection.started.add(index)
                events.append(ShardStarted(cid, index, pod.metadata.name))
            elif phase == "Failed":
                failures[index] = jobs.pod_failure(pod, index)
        status = job.status or k8s.V1JobStatus()
        for index in sorted(jobs.parse_indexes(status.completed_indexes) - collection.ended):
            collection.ended.add(index)
            events.append(ShardFinished(cid, index))
        for index in sorted(jobs.parse_indexes(status.failed_indexes) - collection.ended):
            collection.ended.add(index)
            reason = failures.get(index) or jobs.lost_pod_failure(self.namespace, name, index)
            events.append(ShardFailed(cid, index, reason))
        for condition in status.conditions or []:
            if condition.type == "Failed" and condition.status == "True":
                reason = (
                    f"Job {self.namespace}/{name} failed: {condition.reason}: {condition.message}"
                )
                events += [ShardFailed(cid, i, reason) for i in _end_all(collection)]
        return events

    def _counts(self, collection: _Followed) -> list[Event]:
        cid = collection.plan.collection_id
        try:
            stats = self.store.Stats(
                episode_store_pb2.StatsRequest(
                    filter=episode_store_pb2.EpisodeFilter(collection_id=cid)
                ),
                timeout=kube.REQUEST_TIMEOUT_S,
            )
        except grpc.RpcError as err:
            log.warning("cannot count the collection's episodes", extra={"error": str(err)})
            return []
        shards = {shard_robot_id(k): k for k in range(collection.plan.num_shards)}
        counts: dict[int, tuple[int, int]] = {}
        for group in stats.groups:
            if group.robot_id in shards:
                episodes, successes = counts.get(shards[group.robot_id], (0, 0))
                counts[shards[group.robot_id]] = (
                    episodes + group.episodes,
                    successes + group.successes,
                )
        events: list[Event] = []
        for shard, count in sorted(counts.items()):
            if collection.counts.get(shard) != count:
                collection.counts[shard] = count
                events.append(ShardCounted(cid, shard, *count))
        return events

    def _gone(self, collection: _Followed) -> list[Event]:
        """The Job no longer exists: stopped on purpose, or deleted behind the farm's back."""
        cid = collection.plan.collection_id
        if collection.stopping:
            return [ShardStopped(cid, i) for i in _end_all(collection)]
        reason = (
            f"Job {self.namespace}/{collection.name} was deleted before the shard ended (by hand, "
            "or its TTL); start the collection again with skip_stored to resume it"
        )
        return [ShardFailed(cid, i, reason) for i in _end_all(collection)]

    def close(self) -> None:
        """Stops following; the Jobs run on (starting the collection again adopts its Job)."""
        self.channel.close()


def _end_all(collection: _Followed) -> list[int]:
    """The shards that had not ended, now counted as ended."""
    left = sorted(set(range(collection.plan.num_shards)) - collection.ended)
    collection.ended.update(left)
    return left


def _message(err: ApiException) -> str:
    """The API server's own words from an error body (a Status object), else its reason."""
    try:
        return json.loads(err.body or "{}").get("message") or str(err.reason)
    except (ValueError, AttributeError):
        return str(err.reason)
