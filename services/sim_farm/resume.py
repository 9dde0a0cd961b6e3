"""Resuming a collection: what the store holds of it, once proven to be the same collection.

Episode ids are deterministic (collection id, shard, index), so a collection
started again with skip_stored runs only the episodes the store lacks. That is
right only when the stored ones came from the same plan: every collected
episode carries its plan's fingerprint (the COLLECTION_PLAN attribute), and a
stored episode of another plan, or of none, makes the resume an error. Without
this, a collection id reused for another model would silently return the old
model's outcomes.
"""

from __future__ import annotations

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes.shards import COLLECTION_PLAN
from services.episode_store import client
from services.sim_farm.plan import CollectionPlan


class ResumeConflict(ValueError):
    """The store holds episodes of the collection's id that another plan collected."""


def stored_outcomes(store_stub, plan: CollectionPlan) -> dict[str, bool]:
    """Episode id -> success of what the store holds of `plan`'s collection.

    Raises:
        ResumeConflict: some of them were collected under another plan.
        grpc.RpcError: the store could not be listed.
    """
    found = list(
        client.list_all(
            store_stub, episode_store_pb2.EpisodeFilter(collection_id=plan.collection_id)
        )
    )
    fingerprint = plan.fingerprint()
    foreign = [e for e in found if e.attributes.get(COLLECTION_PLAN) != fingerprint]
    if foreign:
        other = foreign[0].attributes.get(COLLECTION_PLAN) or "none recorded"
        raise ResumeConflict(
            f"collection {plan.collection_id}: the episode store holds {len(foreign)} of its "
            f"{len(found)} episodes from another plan (fingerprint {other}; this request's is "
            f"{fingerprint}): another model, policy, arm or setting. Resuming would mix the "
            "two, so start this one under a new collection id"
        )
    return {e.episode_id: e.result == common_pb2.GRASP_RESULT_SUCCESS for e in found}
