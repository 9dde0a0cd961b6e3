"""Seeded sample episodes drawn with numpy, for exercising the store without a simulator.

The scenes are schematic (a tray, a few boxes, an arm that descends towards
one of them) but the episodes are complete and consistent: images, masks,
poses, commands, and an outcome that follows from where the gripper closed.
"""

from __future__ import annotations

import numpy as np

from graspfleet.v1 import common_pb2
from models.episodes.shards import EpisodeRecord
from services.common.images import encode_image

_TRAY = (0.25, 0.75)  # tray extent as a fraction of the image


def _render(
    rng_colors, objects, arm_xy, size: int, arm_visible: bool
) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.empty((size, size, 3), np.uint8)
    rgb[:] = rng_colors["background"]
    mask = np.zeros((size, size), np.uint8)
    lo, hi = (int(f * size) for f in _TRAY)
    rgb[lo:hi, lo:hi] = rng_colors["tray"]
    mask[lo:hi, lo:hi] = common_pb2.MASK_CLASS_TRAY
    for (x, y, half), color in zip(objects, rng_colors["objects"], strict=True):
        x0, x1 = int((x - half) * size), int((x + half) * size)
        y0, y1 = int((y - half) * size), int((y + half) * size)
        rgb[y0:y1, x0:x1] = color
        mask[y0:y1, x0:x1] = common_pb2.MASK_CLASS_OBJECT
    if arm_visible:
        ax, ay = int(arm_xy[0] * size), int(arm_xy[1] * size)
        w = max(1, size // 16)
        rgb[0:ay, max(0, ax - w) : ax + w] = rng_colors["arm"]
        mask[0:ay, max(0, ax - w) : ax + w] = common_pb2.MASK_CLASS_ARM
    return rgb, mask


def sample_episode(
    seed: int,
    *,
    episode_id: str | None = None,
    robot_id: str = "sample-arm",
    domain: int = common_pb2.DOMAIN_SIM,
    num_steps: int = 10,
    image_size: int = 64,
    encoding: int = common_pb2.Image.ENCODING_PNG,
    with_masks: bool = True,
) -> EpisodeRecord:
    """A complete, deterministic episode from `seed`."""
    rng = np.random.default_rng(seed)
    colors = {
        "background": rng.integers(0, 255, 3),
        "tray": rng.integers(80, 200, 3),
        "arm": rng.integers(150, 255, 3),
        "objects": [rng.integers(0, 255, 3) for _ in range(3)],
    }
    objects = [
        (rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.03, 0.06))
        for _ in range(3)
    ]
    target = objects[int(rng.integers(0, 3))]
    start = np.array([rng.uniform(0.3, 0.7), 0.2, 0.3])
    goal = np.array([target[0] + rng.normal(0, 0.05), target[1] + rng.normal(0, 0.05), 0.02])
    x0_rgb, x0_mask = _render(colors, objects, start, image_size, arm_visible=False)
    header = common_pb2.EpisodeHeader(
        episode_id=episode_id or f"sample-{seed}",
        robot_id=robot_id,
        domain=domain,
        randomization=common_pb2.RANDOMIZATION_NONE if domain == common_pb2.DOMAIN_SIM else 0,
        policy="random",
        x0=encode_image(x0_rgb, encoding),
        object_ids=[f"box-{seed}-{i}" for i in range(3)],
        object_set="samples",
        seed=seed,
    )
    header.started_at.FromSeconds(1_700_000_000 + seed)
    if with_masks:
        header.x0_mask.CopyFrom(encode_image(x0_mask, encoding))
    steps = []
    position = start.copy()
    yaw = 0.0
    for i in range(num_steps):
        rgb, mask = _render(colors, objects, position, image_size, arm_visible=True)
        remaining = num_steps - i
        delta = (goal - position) / remaining
        dyaw = float(rng.uniform(-0.3, 0.3))
        kind = common_pb2.Command.KIND_CLOSE if i == num_steps - 1 else common_pb2.Command.KIND_MOVE
        step = common_pb2.Step(
            index=i,
            image=encode_image(rgb, encoding),
            pose=common_pb2.Pose(
                position_m=common_pb2.Vec3(x=position[0], y=position[1], z=position[2]), yaw_rad=yaw
            ),
            command=common_pb2.Command(
                kind=kind,
                motion=common_pb2.MotionCommand(
                    dx_cm=delta[0] * 100,
                    dy_cm=delta[1] * 100,
                    dz_cm=delta[2] * 100,
                    sin_dyaw=float(np.sin(dyaw)),
                    cos_dyaw=float(np.cos(dyaw)),
                ),
            ),
        )
        step.time.FromSeconds(1_700_000_000 + seed + i)
        if with_masks:
            step.mask.CopyFrom(encode_image(mask, encoding))
        steps.append(step)
        position = position + delta
        yaw += dyaw
    hit = abs(position[0] - target[0]) < target[2] and abs(position[1] - target[1]) < target[2]
    outcome = common_pb2.EpisodeOutcome(
        result=common_pb2.GRASP_RESULT_SUCCESS if hit else common_pb2.GRASP_RESULT_FAILURE,
        final_pose=common_pb2.Pose(
            position_m=common_pb2.Vec3(x=position[0], y=position[1], z=position[2]),
            yaw_rad=yaw,
            gripper_closure=1.0,
        ),
        num_steps=num_steps,
    )
    outcome.ended_at.FromSeconds(1_700_000_000 + seed + num_steps)
    return EpisodeRecord(header=header, steps=tuple(steps), outcome=outcome)
