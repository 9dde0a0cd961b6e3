"""Who may write an episode: an arm's episodes come from that arm's agent alone.

With workload identities on (the store requires client certificates; the
identity is the certificate's Common Name, services.common.auth):

- `robot-agent/<X>` may write the episodes of robot_id X, in any domain (the
  agent of a simulated arm writes SIM ones);
- `sim-farm` may write the episodes of its own shards' robot ids
  (`sim-farm-<shard>`): simulated collections, and the proxy-real arms it
  simulates for collections and evaluations, never a fleet arm's;
- no other identity writes episodes.

The rollout and the automatic retraining count REAL episodes by model and
robot; a forged stream is refused at its header, before anything is stored, so
every episode they count was written by the arm it names. Each stored summary
records its writer.

Without identities (a plaintext store: a local fleet, tests), no caller can be
told from another: every write is let through, the summary's writer stays
empty, and the store says so in its log when it starts.
"""

from __future__ import annotations

from graspfleet.v1 import common_pb2
from services.common.auth import SIM_FARM, SIM_FARM_SHARD_PREFIX, robot_identity


def refusal(identity: str | None, header: common_pb2.EpisodeHeader) -> str | None:
    """Why `identity` may not write the episode `header` starts, or None when it may.

    Args:
        identity: The caller's verified identity; None when the store checks none.
        header: The episode's header (its robot id).
    """
    if identity is None:
        return None
    robot_id = header.robot_id
    if identity == robot_identity(robot_id):
        return None
    if identity == SIM_FARM and robot_id.startswith(SIM_FARM_SHARD_PREFIX):
        return None
    if identity == SIM_FARM:
        return (
            f"the sim-farm writes episodes of its shards only (robot ids "
            f"'{SIM_FARM_SHARD_PREFIX}<n>'), not of robot_id {robot_id!r}"
        )
    return (
        f"identity {identity!r} may not write episodes of robot_id {robot_id!r}: an arm's "
        f"episodes are accepted from {robot_identity(robot_id)!r} alone"
    )
