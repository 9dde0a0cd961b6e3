"""The simulated grasping world: a Kuka IIWA with a two-finger gripper over a tray, in PyBullet.

One physics client per world (DIRECT mode, so several worlds live in one
process) and one seeded generator per world; every episode draws its own
generator from its seed, so an episode replays exactly from its seed. The
static scene (floor, table, tray, arm) is built once; a reset only swaps the
objects and redraws the randomization.

Between steps the arm moves kinematically (closed-form IK, joints set), which
is fast and exact, and stops where the gripper first touches an object or the
tray, as a compliant arm would; physics runs where it decides the outcome:
objects settling, the fingers closing, and the lift. A grasp succeeds when an
object rises with the gripper.

Frames: the arm's base link frame is the world origin, so positions here are
in the robot base frame. Poses are the flange's (the last arm link); the
fingertips close FINGERTIP_DROP_M below it and a little to its side
(fingertip_offset). The yaw is the direction in which the fingers close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils import bullet_client

from robots import canonical
from robots.config import WorldConfig
from robots.kinematics import ArmGeometry, wrap_yaw
from robots.objects import ObjectSet, ObjectSpec
from robots.randomization import EpisodeLook, draw_look, load_textures

MASK_BACKGROUND, MASK_TRAY, MASK_ARM, MASK_OBJECT = 0, 1, 2, 3
TIME_STEP_S = 1.0 / 240.0
ARM_BASE = (-0.1, 0.0, 0.07)
TRAY_CENTRE = (0.64, 0.075, -0.19)
TRAY_FLOOR_Z = -0.175  # top of traybox.urdf's floor slab
RAISE_M = 0.05  # how far a RAISE command lifts the gripper while it moves
# Lowest point of the open fingertips' collision shapes below the flange, gripper pointing down.
FINGERTIP_DROP_M = 0.27
GUARD_STEP_M = 0.005  # resolution of a move that stops on contact
CONTACT_TOLERANCE_M = 0.002  # how far the fingers may press into something when they stop
FLANGE, GRIPPER_JOINT = 6, 7
FINGERS = ((8, -1.0), (11, 1.0))  # joint, sign of "open"
FINGER_TIPS = (10, 13)
OPEN_ANGLE = 0.3
# Joint angles that swing the arm out of the camera's view for x0.
PARKED = [-2.5, 0.5, 0.0, -1.0, 0.0, 0.9, 0.0]


@dataclass(frozen=True)
class Pose:
    """End-effector (flange) pose in the robot base frame."""

    position: np.ndarray  # [3] metres
    yaw: float  # radians about the vertical axis: the direction the fingers close in
    gripper_closure: float  # 0 open, 1 closed


@dataclass(frozen=True)
class Observation:
    """One camera frame with its segmentation mask and the gripper's pose."""

    rgb: np.ndarray  # [H, W, 3] uint8
    mask: np.ndarray  # [H, W] uint8 class ids (MASK_*)
    pose: Pose
    # [H, W, 3] uint8 RCAN canonical image of the same frame (robots.canonical), when rendered.
    canonical: np.ndarray | None = None


@dataclass(frozen=True)
class EpisodeStart:
    """What reset() knows about the new episode."""

    seed: int
    x0: Observation
    object_ids: tuple[str, ...]
    look: EpisodeLook = field(repr=False)


class GraspWorld:
    """One simulated arm and tray. Use as a context manager or call close().

    Args:
        config: The world's settings.
        render_canonical: Also produce each observation's canonical image
            (robots.canonical); may be switched later through the attribute.
    """

    def __init__(self, config: WorldConfig, render_canonical: bool = False) -> None:
        self.config = config
        self.render_canonical = render_canonical
        self.rng = np.random.default_rng(config.seed)
        self.objects = ObjectSet(
            config.object_set, config.object_size_range_m, config.object_density_kg_m3
        )
        self.sim = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        self.sim.setAdditionalSearchPath(pybullet_data.getDataPath())
        self.sim.setGravity(0, 0, -9.81)
        self.sim.setTimeStep(TIME_STEP_S)
        self.plane = self.sim.loadURDF("plane.urdf", [0, 0, -1])
        self.table = self.sim.loadURDF("table/table.urdf", [0.5, 0.0, -0.82])
        self.tray = self.sim.loadURDF("tray/traybox.urdf", TRAY_CENTRE, useFixedBase=True)
        self.arm = self.sim.loadSDF("kuka_iiwa/kuka_with_gripper2.sdf")[0]
        # The base's inertial frame sits at ARM_BASE in its link frame: this puts the
        # link frame, and so the robot base frame, at the world origin.
        self.sim.resetBasePositionAndOrientation(self.arm, ARM_BASE, [0, 0, 0, 1])
        self.geometry = ArmGeometry.measure(self.sim, self.arm, FLANGE)
        self._tip_offset = self._measure_tip_offset()
        self.textures = load_textures(self.sim)
        self.body_ids: list[int] = []
        self.look: EpisodeLook | None = None
        self.episode_rng = np.random.default_rng(config.seed)
        self.sensor_rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(1)[0])
        self.target = np.zeros(3)
        self.yaw = 0.0
        self.closure = 0.0
        self.physics_steps = 0
        self.renders = 0

    # -- episode -----------------------------------------------------------------

    def reset(self, seed: int | None = None) -> EpisodeStart:
        """Starts an episode: new objects and randomization, x0 captured with the arm out of view."""
        seed = int(self.rng.integers(1 << 63)) if seed is None else int(seed)
        self.episode_rng = np.random.default_rng(seed)
        # The sensor's per-frame noise has a stream of its own: how many numbers a frame
        # takes (its sensor resolution) must not move the motion noise drawn after it.
        self.sensor_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        rng = self.episode_rng
        self.look = draw_look(rng, self.config, self.sim, self.textures)
        self.look.apply_scene(self.sim, self.tray, self.arm, self.plane, self.table)
        self.sim.resetBasePositionAndOrientation(
            self.tray, np.add(TRAY_CENTRE, self.look.tray_offset), [0, 0, 0, 1]
        )
        specs = self.objects.sample(rng, self.config.objects_per_bin)
        # The arm leaves the view before the objects settle, and holds still there:
        # nothing left over from the last episode may touch this one.
        self._park_arm()
        self._set_fingers(0.0)
        self._hold_joints()
        self._replace_objects(specs, rng)
        x0 = self.observe()
        start = np.array(
            [
                rng.uniform(0.55, 0.73),
                rng.uniform(-0.02, 0.17),
                self.config.workspace.high[2] - 0.02,
            ]
        )
        self._set_fingers(0.0)
        self._place_flange(start, 0.0)
        return EpisodeStart(
            seed=seed, x0=x0, object_ids=tuple(s.object_id for s in specs), look=self.look
        )

    def _replace_objects(self, specs: list[ObjectSpec], rng: np.random.Generator) -> None:
        for body in self.body_ids:
            self.sim.removeBody(body)
        self.body_ids = []
        centre = np.add(TRAY_CENTRE, self.look.tray_offset)
        for i, spec in enumerate(specs):
            position = [
                centre[0] + rng.uniform(-0.12, 0.12),
                centre[1] + rng.uniform(-0.12, 0.12),
                -0.05 + 0.06 * i,
            ]
            orientation = self.sim.getQuaternionFromEuler([0, 0, rng.uniform(-math.pi, math.pi)])
            body = self._load(spec, position, orientation)
            if spec.colour is not None:
                self.sim.changeVisualShape(body, -1, rgbaColor=spec.colour)
            self.look.apply_object(self.sim, body, rng)
            self.body_ids.append(body)
        self._simulate(150)  # let them fall and settle

    def _load(self, spec: ObjectSpec, position, orientation) -> int:
        if spec.prisms:
            shapes = dict(
                shapeTypes=[pybullet.GEOM_BOX] * len(spec.prisms),
                halfExtents=[p.half_extents for p in spec.prisms],
            )
            frames = dict(
                collisionFramePositions=[p.position for p in spec.prisms],
                collisionFrameOrientations=[p.orientation for p in spec.prisms],
            )
            collision = self.sim.createCollisionShapeArray(**shapes, **frames)
            visual = self.sim.createVisualShapeArray(
                **shapes,
                visualFramePositions=frames["collisionFramePositions"],
                visualFrameOrientations=frames["collisionFrameOrientations"],
            )
            return self.sim.createMultiBody(spec.mass_kg, collision, visual, position, orientation)
        if spec.path.endswith(".obj"):
            collision = self.sim.createCollisionShape(
                pybullet.GEOM_MESH,
                fileName=spec.path,
                meshScale=[spec.mesh_scale] * 3,
                collisionFramePosition=spec.mesh_offset,
            )
            visual = self.sim.createVisualShape(
                pybullet.GEOM_MESH,
                fileName=spec.path,
                meshScale=[spec.mesh_scale] * 3,
                visualFramePosition=spec.mesh_offset,
            )
            return self.sim.createMultiBody(spec.mass_kg, collision, visual, position, orientation)
        return self.sim.loadURDF(spec.path, position, orientation)

    # -- the arm -----------------------------------------------------------------

    def _park_arm(self) -> None:
        for joint, angle in enumerate(PARKED):
            self.sim.resetJointState(self.arm, joint, angle)
        self.sim.resetJointState(self.arm, GRIPPER_JOINT, 0.0)

    def _hold_joints(self) -> None:
        """Position control on every joint at its current angle."""
        for joint in range(self.sim.getNumJoints(self.arm)):
            angle = self.sim.getJointState(self.arm, joint)[0]
            self.sim.setJointMotorControl2(
                self.arm, joint, pybullet.POSITION_CONTROL, targetPosition=angle, force=500
            )

    def _place_flange(self, position: np.ndarray, yaw: float) -> None:
        """Puts the flange exactly at `position` (pulled in to the arm's reach), pointing down."""
        position = self.geometry.reachable(position)
        for joint, angle in enumerate(self.geometry.solve(position, yaw)):
            self.sim.resetJointState(self.arm, joint, angle)
        self.sim.resetJointState(self.arm, GRIPPER_JOINT, 0.0)
        self.target, self.yaw = position, yaw

    def _measure_tip_offset(self) -> np.ndarray:
        """The fingertips' midpoint relative to the flange at yaw 0, horizontally (metres)."""
        self._set_fingers(0.0)
        self._place_flange(np.array([0.6, 0.0, 0.3]), 0.0)
        tips = [
            self.sim.getLinkState(self.arm, t, computeForwardKinematics=1)[4] for t in FINGER_TIPS
        ]
        flange = self.sim.getLinkState(self.arm, FLANGE, computeForwardKinematics=1)[4]
        return np.mean(tips, axis=0)[:2] - np.asarray(flange)[:2]

    def fingertip_offset(self, yaw: float) -> np.ndarray:
        """Where the fingers close relative to the flange at `yaw`: the flange is not above them.

        Returns:
            [3] metres in the base frame: the fingers sit a little to the side of the
            flange's axis and FINGERTIP_DROP_M below it.
        """
        c, s = math.cos(yaw), math.sin(yaw)
        x, y = self._tip_offset
        return np.array([c * x - s * y, s * x + c * y, -FINGERTIP_DROP_M])

    def _set_fingers(self, closure: float) -> None:
        angle = OPEN_ANGLE * (1.0 - closure)
        for joint, sign in FINGERS:
            self.sim.resetJointState(self.arm, joint, sign * angle)
        for tip in FINGER_TIPS:
            self.sim.resetJointState(self.arm, tip, 0.0)
        self.closure = closure

    def pose(self) -> Pose:
        """The flange pose where the arm was last placed, with its yaw and gripper closure."""
        return Pose(position=self.target.copy(), yaw=self.yaw, gripper_closure=self.closure)

    def move(self, motion: np.ndarray, raised: bool = False) -> np.ndarray:
        """Moves by a 5-D command (dx, dy, dz cm; sin, cos of the yaw change), clamped to the workspace.

        Args:
            motion: The command.
            raised: Move with the gripper lifted RAISE_M above where it is.

        Returns:
            The translation actually applied, in cm (after noise, step limit, clamp and
            stopping on contact).
        """
        workspace = self.config.workspace
        delta_cm = np.asarray(motion[:3], dtype=np.float64).copy()
        if self.config.motion_noise_cm:
            delta_cm[:2] += self.episode_rng.normal(0.0, self.config.motion_noise_cm, 2)
        length = np.linalg.norm(delta_cm)
        if length > workspace.max_step_cm:
            delta_cm *= workspace.max_step_cm / length
        target = workspace.clamp(self.target + delta_cm / 100.0)
        if raised:
            # Lift clear of the objects while moving across: never lower than now plus RAISE_M.
            target[2] = min(workspace.high[2], max(target[2], self.target[2] + RAISE_M))
        turn = math.atan2(float(motion[3]), float(motion[4]))
        before = self.target
        self._guarded_move(target, turn)
        return (self.target - before) * 100.0

    def _guarded_move(self, target: np.ndarray, turn: float) -> None:
        """Goes to `target`, or stops where the gripper first meets an object or the tray.

        A compliant arm stops on contact; teleporting the fingers into an object
        instead would let the physics of the grasp squeeze it out of the overlap
        and count grasps that could never happen.
        """
        start, start_yaw = self.target, self.yaw
        self._place_flange(target, wrap_yaw(start_yaw + turn))
        if not self._in_contact():
            return
        steps = max(1, math.ceil(np.linalg.norm(target - start) / GUARD_STEP_M))
        free = (start, start_yaw)
        for i in range(steps + 1):
            position = start + (target - start) * i / steps
            yaw = wrap_yaw(start_yaw + turn * i / steps)
            self._place_flange(position, yaw)
            if self._in_contact():
                if i == 0:  # already touching: only a clean move is refused
                    free = (target, wrap_yaw(start_yaw + turn))
                break
            free = (position, yaw)
        self._place_flange(*free)

    def _in_contact(self) -> bool:
        """Whether the arm presses into an object or the tray deeper than CONTACT_TOLERANCE_M."""
        for body in (*self.body_ids, self.tray):
            points = self.sim.getClosestPoints(self.arm, body, 0.0)
            if any(point[8] < -CONTACT_TOLERANCE_M for point in points):
                return True
        return False

    def grasp(self) -> bool:
        """Closes the fingers where the gripper is, lifts, and tells whether an object came along."""
        before = {
            body: self.sim.getBasePositionAndOrientation(body)[0][2] for body in self.body_ids
        }
        joints = [self.sim.getJointState(self.arm, j)[0] for j in range(8)]
        for joint in range(8):
            self.sim.setJointMotorControl2(
                self.arm, joint, pybullet.POSITION_CONTROL, targetPosition=joints[joint], force=500
            )
        grip_force = self.look.grip_force
        for step in range(60):
            angle = OPEN_ANGLE * max(0.0, 1.0 - step / 40.0)
            for joint, sign in FINGERS:
                self.sim.setJointMotorControl2(
                    self.arm,
                    joint,
                    pybullet.POSITION_CONTROL,
                    targetPosition=sign * angle,
                    force=grip_force,
                )
            for tip in FINGER_TIPS:
                self.sim.setJointMotorControl2(
                    self.arm, tip, pybullet.POSITION_CONTROL, targetPosition=0, force=grip_force
                )
            self._simulate(1)
        lift = np.array([0.0, 0.0, self.config.lift_height_m + 0.05])
        start = self.target.copy()
        for i in range(1, 31):
            goal = self.geometry.reachable(start + lift * i / 30)
            arm_joints = self.geometry.solve(goal, self.yaw)
            for joint in range(7):
                self.sim.setJointMotorControl2(
                    self.arm,
                    joint,
                    pybullet.POSITION_CONTROL,
                    targetPosition=arm_joints[joint],
                    force=500,
                )
            self._simulate(4)
        self.target = np.asarray(self.sim.getLinkState(self.arm, FLANGE)[4])
        self.closure = 1.0
        risen = max(self.sim.getBasePositionAndOrientation(b)[0][2] - z for b, z in before.items())
        return bool(risen > self.config.lift_height_m * 0.7)

    def _simulate(self, steps: int) -> None:
        for _ in range(steps):
            self.sim.stepSimulation()
        self.physics_steps += steps

    # -- sensing -----------------------------------------------------------------

    def observe(self) -> Observation:
        """The camera image, its segmentation mask, the current pose and, if asked, the canonical image."""
        camera = self.look.camera
        width, height = self.config.camera.width, self.config.camera.height
        _, _, rgba, depth, segmentation = self.sim.getCameraImage(
            width,
            height,
            camera.view_matrix,
            camera.projection_matrix,
            renderer=pybullet.ER_TINY_RENDERER,
            lightDirection=self.look.light_direction,
            lightColor=self.look.light_colour,
            lightAmbientCoeff=self.look.ambient,
            lightDiffuseCoeff=self.look.diffuse,
            shadow=1,
        )
        self.renders += 1
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3]
        bodies = np.asarray(segmentation, dtype=np.int64).reshape(height, width)
        mask = np.full((height, width), MASK_BACKGROUND, np.uint8)
        mask[bodies == self.tray] = MASK_TRAY
        mask[bodies == self.arm] = MASK_ARM
        mask[np.isin(bodies, self.body_ids)] = MASK_OBJECT
        flat = None
        if self.render_canonical:
            depth = np.asarray(depth, dtype=np.float64).reshape(height, width)
            flat = canonical.render(mask, depth, camera.projection_matrix)
        if self.look.sensor is not None:
            rgb = self.look.sensor.apply(rgb, mask, self.sensor_rng)
        return Observation(rgb=rgb, mask=mask, pose=self.pose(), canonical=flat)

    # -- privileged state (for the oracle and tests) -------------------------------

    def object_poses(self) -> list[tuple[np.ndarray, float]]:
        """(position, yaw) of each object: privileged information no policy may use."""
        poses = []
        for body in self.body_ids:
            position, orientation = self.sim.getBasePositionAndOrientation(body)
            poses.append((np.asarray(position), self.sim.getEulerFromQuaternion(orientation)[2]))
        return poses

    def object_aabbs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """World-frame bounding boxes (low, high) of the objects."""
        return [tuple(np.asarray(v) for v in self.sim.getAABB(body)) for body in self.body_ids]

    def object_footprint(self, index: int) -> tuple[float, float]:
        """An object's extent along its own x and y axes (privileged; no physics step taken)."""
        body = self.body_ids[index]
        position, orientation = self.sim.getBasePositionAndOrientation(body)
        self.sim.resetBasePositionAndOrientation(
            body, position, self.sim.getQuaternionFromEuler([0, 0, 0])
        )
        low, high = self.sim.getAABB(body)
        self.sim.resetBasePositionAndOrientation(body, position, orientation)
        return high[0] - low[0], high[1] - low[1]

    def close(self) -> None:
        """Disconnects the physics client; safe to call twice."""
        if self.sim is not None:
            self.sim.disconnect()
            self.sim = None

    def __enter__(self) -> GraspWorld:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
