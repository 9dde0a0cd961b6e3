"""Robot drivers: one interface for simulated, proxy-real and (later) hardware arms, registered by name.

The robot agent talks to an arm only through this interface: connect, reset
(new scene, returns x0), observe, move, grasp (close and lift, returns success),
disconnect. Use a driver as a context manager so the arm is released on any exit.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from robots.config import ArmConfig, WorldConfig
from robots.world import EpisodeStart, GraspWorld, Observation, Pose


class RobotDriver(abc.ABC):
    """One arm. Call connect() (or enter the context) before anything else."""

    def __init__(self, arm: ArmConfig) -> None:
        self.arm = arm

    @property
    def domain(self) -> str:
        """The arm's domain, "sim" or "proxy-real"/"real": how its episodes are labelled."""
        return self.arm.domain

    @abc.abstractmethod
    def connect(self) -> None:
        """Takes hold of the arm (for a simulated arm, builds its world)."""

    @abc.abstractmethod
    def reset(self, seed: int) -> EpisodeStart:
        """Starts a grasp attempt: objects in the tray, x0 taken with the arm out of view."""

    @abc.abstractmethod
    def observe(self) -> Observation:
        """The current camera image, segmentation mask and gripper pose."""

    @abc.abstractmethod
    def pose(self) -> Pose:
        """The gripper's pose in the robot base frame."""

    @abc.abstractmethod
    def move(self, motion: np.ndarray, raised: bool = False) -> np.ndarray:
        """Moves by a 5-D command within the workspace; returns the translation applied (cm)."""

    @abc.abstractmethod
    def grasp(self) -> bool:
        """Closes the gripper, lifts, and reports whether an object is held."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Releases the arm; safe to call when it is not connected."""

    def __enter__(self) -> RobotDriver:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()


class SimulatedDriver(RobotDriver):
    """An arm in a GraspWorld (sim or proxy-real, as the arm's config says)."""

    def __init__(self, arm: ArmConfig) -> None:
        super().__init__(arm)
        self.world: GraspWorld | None = None

    def world_config(self) -> WorldConfig:
        """The arm's world settings, with the domain the arm's own domain selects."""
        return replace(
            self.arm.world, domain="proxy-real" if self.arm.domain == "proxy-real" else "sim"
        )

    def connect(self) -> None:
        """Builds the arm's GraspWorld unless it is already connected."""
        if self.world is None:
            self.world = GraspWorld(self.world_config())

    def _world(self) -> GraspWorld:
        if self.world is None:
            raise RuntimeError(f"driver for {self.arm.id} is not connected")
        return self.world

    def reset(self, seed: int) -> EpisodeStart:
        """Starts a grasp attempt in the world from `seed`."""
        return self._world().reset(seed)

    def observe(self) -> Observation:
        """The world's current observation."""
        return self._world().observe()

    def pose(self) -> Pose:
        """The world's current gripper pose."""
        return self._world().pose()

    def move(self, motion: np.ndarray, raised: bool = False) -> np.ndarray:
        """Moves the gripper in the world; returns the translation applied (cm)."""
        return self._world().move(motion, raised=raised)

    def grasp(self) -> bool:
        """Closes and lifts in the world; True when an object is held."""
        return self._world().grasp()

    def disconnect(self) -> None:
        """Closes the world, if it is open."""
        if self.world is not None:
            self.world.close()
            self.world = None


DRIVERS: dict[str, Callable[[ArmConfig], RobotDriver]] = {
    "sim": SimulatedDriver,
    "proxy-real": SimulatedDriver,
}


def register_driver(name: str, factory: Callable[[ArmConfig], RobotDriver]) -> None:
    """Makes a driver available to inventory files under `name` (e.g. a hardware arm)."""
    DRIVERS[name] = factory


def make_driver(arm: ArmConfig) -> RobotDriver:
    """The driver an arm's inventory entry names."""
    if arm.driver not in DRIVERS:
        raise ValueError(
            f"arm {arm.id}: unknown driver {arm.driver!r}; registered: {sorted(DRIVERS)}"
        )
    return DRIVERS[arm.driver](arm)
