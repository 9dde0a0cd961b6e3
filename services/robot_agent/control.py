"""The robot agent's episode loop: the arm's safety rules plus the control-step latency metric."""

from __future__ import annotations

from prometheus_client import Histogram

from robots.episode import EpisodeResult
from robots.safety import run_safe_episode

CONTROL_STEP_SECONDS = Histogram(
    "graspfleet_agent_control_step_seconds",
    "One control step: observe, choose the command, execute it; seconds.",
    ["robot_id"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def run_arm_episode(driver, policy, seed: int, max_steps: int, robot_id: str) -> EpisodeResult:
    """One episode on a robot driver, with the arm's safety rules and control-step metrics."""
    histogram = CONTROL_STEP_SECONDS.labels(robot_id)
    return run_safe_episode(
        driver, policy, seed, max_steps, on_step=lambda record: histogram.observe(record.seconds)
    )
