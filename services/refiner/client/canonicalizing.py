"""RCAN at run time: every camera image goes through the refiner's RCAN generator before planning.

An agent configured to canonicalize wraps its command source in
`CanonicalizingPolicy`: x0 (once, with the first step's image) and each xt are
translated to the canonical style, and the planner, and so the grasp model,
sees only canonical images, as RCAN's grasp model was trained on them. The arm
side is untouched: the episode keeps the raw images, and `attach` adds the
canonical ones to its observations so the store gets both.

A refiner that does not answer stops the arm exactly like a planner outage:
the source raises `RefinerUnavailable` (an `Abort`), the episode ends where the
arm stands and the agent safe-stops until the refiner is back.
"""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np

from graspfleet.v1 import common_pb2
from robots.episode import Abort, EpisodeResult
from robots.policies import Action
from robots.world import Observation
from services.refiner import client


class RefinerUnavailable(Abort):
    """The refiner did not canonicalize an image: the arm must stop."""


class CanonicalizingPolicy:
    """Wraps a command source so that it sees canonical images only.

    Args:
        policy: The command source (a PlannerPolicy, or any begin/act source).
        stub: RefinerStub of the refiner serving the RCAN generator.
        model: The RCAN model label or version to use.
        timeout_s: Deadline of one Refine call.
        kind: The refiner kind that translates the images ("rcan"; any kind the
            refiner serves, for evaluating other image transforms).
    """

    def __init__(
        self, policy, stub, model: common_pb2.ModelRef, timeout_s: float, kind: str = "rcan"
    ) -> None:
        self.policy = policy
        self.stub = stub
        self.model = model
        self.timeout_s = timeout_s
        self.kind = kind
        self.name = policy.name
        self._x0: Observation | None = None
        self._begin_args: tuple[int, int] = (0, 0)
        self.x0_canonical: np.ndarray | None = None
        self.canonical: list[np.ndarray] = []  # one per act(), in step order

    def begin(self, x0: Observation, seed: int, max_steps: int) -> None:
        """Keeps x0 and the episode's arguments; the wrapped source begins on the first act()."""
        # x0 is translated with the first step's image: one call instead of two, and a
        # refiner outage then surfaces inside act(), where the episode loop stops the arm.
        self._x0, self._begin_args = x0, (seed, max_steps)
        self.x0_canonical = None
        self.canonical = []

    def act(self, observation: Observation, step: int, steps_left: int) -> Action:
        """The wrapped source's action, given the canonical images of x0 and the observation."""
        if self.x0_canonical is None:
            self.x0_canonical, canonical = self._canonicalize(self._x0.rgb, observation.rgb)
            self.policy.begin(_as_canonical(self._x0, self.x0_canonical), *self._begin_args)
        else:
            (canonical,) = self._canonicalize(observation.rgb)
        self.canonical.append(canonical)
        return self.policy.act(_as_canonical(observation, canonical), step, steps_left)

    def _canonicalize(self, *images: np.ndarray) -> list[np.ndarray]:
        try:
            return client.refine(
                self.stub, images, self.kind, model=self.model, timeout_s=self.timeout_s
            ).images
        except grpc.RpcError as err:
            raise RefinerUnavailable(f"refiner: {err.code().name}: {err.details()}") from None

    def attach(self, run: EpisodeResult) -> EpisodeResult:
        """The episode with each observation's canonical image filled in (raw images kept)."""
        if self.x0_canonical is None:
            return run  # stopped before the first image was translated: nothing to add
        steps = tuple(
            dataclasses.replace(
                record, observation=dataclasses.replace(record.observation, canonical=canonical)
            )
            for record, canonical in zip(run.steps, self.canonical, strict=False)
        )
        x0 = dataclasses.replace(run.x0, canonical=self.x0_canonical)
        return dataclasses.replace(run, x0=x0, steps=steps)


def _as_canonical(observation: Observation, canonical: np.ndarray) -> Observation:
    return dataclasses.replace(observation, rgb=canonical, canonical=canonical)
