"""Running a collection on a sim-farm from the outside: start it, follow it, know how it ended."""

from __future__ import annotations

import time
from collections.abc import Callable

from graspfleet.v1 import sim_farm_pb2, sim_farm_pb2_grpc

FINISHED = frozenset(
    {
        sim_farm_pb2.COLLECTION_STATE_SUCCEEDED,
        sim_farm_pb2.COLLECTION_STATE_FAILED,
        sim_farm_pb2.COLLECTION_STATE_STOPPED,
    }
)
Progress = Callable[[sim_farm_pb2.Collection], None]


def run_collection(
    stub: sim_farm_pb2_grpc.SimFarmStub,
    collection_id: str,
    spec: sim_farm_pb2.CollectionSpec,
    on_progress: Progress | None = None,
    poll_s: float = 1.0,
) -> sim_farm_pb2.Collection:
    """Starts (or rejoins) a collection and waits for its end.

    Args:
        stub: The farm.
        collection_id: The collection's id; a farm that runs it already is rejoined.
        spec: What to collect.
        on_progress: Called with the collection at every poll.
        poll_s: Seconds between polls.

    Returns:
        The collection as it succeeded.

    Raises:
        RuntimeError: it failed or was stopped; the message has the farm's reason.
    """
    stub.StartCollection(
        sim_farm_pb2.StartCollectionRequest(spec=spec, collection_id=collection_id), timeout=60
    )
    while True:
        collection = stub.GetCollection(
            sim_farm_pb2.GetCollectionRequest(collection_id=collection_id), timeout=30
        )
        if on_progress:
            on_progress(collection)
        if collection.state in FINISHED:
            break
        time.sleep(poll_s)
    if collection.state != sim_farm_pb2.COLLECTION_STATE_SUCCEEDED:
        state = sim_farm_pb2.CollectionState.Name(collection.state)
        raise RuntimeError(f"collection {collection_id} ended {state}: {collection.error}")
    return collection
