"""Robot-side episodes (robots/ observations and actions) as the store's messages."""

from __future__ import annotations

import numpy as np
from google.protobuf import timestamp_pb2

from graspfleet.v1 import common_pb2
from models.episodes.shards import EpisodeRecord
from robots.names import ARM_DOMAIN_VALUES, RANDOMIZATION_VALUES
from robots.policies import CLOSE, MOVE, RAISE
from robots.world import Pose
from services.common import clock
from services.common.images import encode_image

# robots.policies' action kinds on the wire.
ACTION_KINDS = {
    MOVE: common_pb2.Command.KIND_MOVE,
    CLOSE: common_pb2.Command.KIND_CLOSE,
    RAISE: common_pb2.Command.KIND_RAISE,
}
ACTION_FROM_KIND = {kind: action for action, kind in ACTION_KINDS.items()}


def pose_message(pose: Pose) -> common_pb2.Pose:
    """A pose as its wire message (position in metres, yaw in radians, gripper closure)."""
    p = pose.position
    return common_pb2.Pose(
        position_m=common_pb2.Vec3(x=float(p[0]), y=float(p[1]), z=float(p[2])),
        yaw_rad=float(pose.yaw),
        gripper_closure=float(pose.gripper_closure),
    )


def _stamp(time_ns: int) -> timestamp_pb2.Timestamp:
    """The recorded wall-clock time, or now when the run did not record one."""
    if not time_ns:
        return clock.now()
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time_ns)
    return stamp


def driving_model(run) -> common_pb2.ModelRef | None:
    """The model version that chose the first model-driven step of a run, if any did."""
    return next((s.action.model for s in run.steps if s.action.model is not None), None)


def to_record(
    run,
    *,
    episode_id: str,
    robot_id: str,
    domain: str,
    randomization: str,
    policy: str,
    object_set: str,
    collection_id: str = "",
    model: common_pb2.ModelRef | None = None,
    with_masks: bool = True,
    encoding: int = common_pb2.Image.ENCODING_PNG,
) -> EpisodeRecord:
    """A robots.episode.EpisodeResult as header, steps and outcome.

    Canonical images (RCAN) go into `x0_canonical` and each step's `canonical`
    wherever the observation carries one.
    """
    header = common_pb2.EpisodeHeader(
        episode_id=episode_id,
        robot_id=robot_id,
        domain=ARM_DOMAIN_VALUES[domain],
        randomization=RANDOMIZATION_VALUES[randomization]
        if domain == "sim"
        else common_pb2.RANDOMIZATION_UNSPECIFIED,
        policy=policy,
        model=model,
        x0=encode_image(run.x0.rgb, encoding),
        object_ids=list(run.object_ids),
        object_set=object_set,
        seed=run.seed,
        collection_id=collection_id,
        started_at=_stamp(getattr(run, "started_ns", 0)),
    )
    if with_masks:
        header.x0_mask.CopyFrom(encode_image(run.x0.mask, encoding))
    if run.x0.canonical is not None:
        header.x0_canonical.CopyFrom(encode_image(run.x0.canonical, encoding))
    steps = []
    for index, trace in enumerate(run.steps):
        action = trace.action
        motion = action.motion
        step = common_pb2.Step(
            index=index,
            image=encode_image(trace.observation.rgb, encoding),
            pose=pose_message(trace.observation.pose),
            command=common_pb2.Command(
                kind=ACTION_KINDS[action.kind],
                motion=common_pb2.MotionCommand(
                    dx_cm=float(motion[0]),
                    dy_cm=float(motion[1]),
                    dz_cm=float(motion[2]),
                    sin_dyaw=float(motion[3]),
                    cos_dyaw=float(motion[4]),
                ),
            ),
            time=_stamp(getattr(trace, "time_ns", 0)),
        )
        if with_masks:
            step.mask.CopyFrom(encode_image(trace.observation.mask, encoding))
        if trace.observation.canonical is not None:
            step.canonical.CopyFrom(encode_image(trace.observation.canonical, encoding))
        if action.predicted_success is not None:
            step.predicted_success = float(np.clip(action.predicted_success, 0.0, 1.0))
        if action.model is not None:
            step.model.CopyFrom(action.model)
        steps.append(step)
    if run.success is None:
        result = common_pb2.GRASP_RESULT_ABORTED
    else:
        result = common_pb2.GRASP_RESULT_SUCCESS if run.success else common_pb2.GRASP_RESULT_FAILURE
    outcome = common_pb2.EpisodeOutcome(
        result=result,
        final_pose=pose_message(run.final_pose),
        ended_at=clock.now(),
        num_steps=len(steps),
        detail=run.abort_reason,
    )
    return EpisodeRecord(header=header, steps=tuple(steps), outcome=outcome)
