"""Episodes as pictures: one episode as a strip, many as a contact sheet (PNG).

- `episode_strip`: x0, then every step's x_t titled with its command (move,
  close or raise; dx, dy, dz in cm) and the predicted success of a model that
  chose it, then the outcome and the label with its source.
- `contact_sheet`: one row per episode: its x0 and last x_t, with the id,
  robot, driving model and label beside them.

Both read what the store serves (GetEpisode with steps); nothing is written
back. `graspfleet episodes show ID --png OUT` and `episodes ls --png OUT`
draw them; the `make run` report includes a sheet and a few strips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from graspfleet.v1 import common_pb2, episode_store_pb2
from services.common.images import decode_image

KINDS = {
    common_pb2.Command.KIND_MOVE: "move",
    common_pb2.Command.KIND_CLOSE: "close",
    common_pb2.Command.KIND_RAISE: "raise",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _fetch(stub, episode_id: str) -> episode_store_pb2.GetEpisodeResponse:
    return stub.GetEpisode(
        episode_store_pb2.GetEpisodeRequest(episode_id=episode_id, include_steps=True), timeout=30
    )


def _label(response: episode_store_pb2.GetEpisodeResponse) -> str:
    label = response.summary.label
    if label.state == common_pb2.LABEL_STATE_UNLABELED:
        return "unlabeled"
    word = "success" if label.success else "failure"
    return f"{word} ({label.source})" if label.source else word


def _model(model: common_pb2.ModelRef) -> str:
    return f"{model.name}:{model.version}" if model.name else "random"


def episode_strip(stub, episode_id: str, path: Path, columns: int = 6) -> Path:
    """Draws one episode as a strip of its images, wrapped every `columns` panels."""
    response = _fetch(stub, episode_id)
    panels = [(decode_image(response.header.x0), "x0 (before the arm enters)")]
    for step in response.steps:
        m = step.command.motion
        title = (
            f"t={step.index} {KINDS.get(step.command.kind, '?')}\n"
            f"dx {m.dx_cm:+.1f} dy {m.dy_cm:+.1f} dz {m.dz_cm:+.1f} cm"
        )
        if step.HasField("predicted_success"):
            title += f"\nP(success) {step.predicted_success:.2f}"
        panels.append((decode_image(step.image), title))
    plt = _pyplot()
    rows = math.ceil(len(panels) / columns)
    width = min(columns, len(panels))
    figure, axes = plt.subplots(rows, width, figsize=(2.2 * width, 2.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image, title) in zip(axes.flat, panels, strict=False):
        axis.imshow(image)
        axis.set_title(title, fontsize=7)
    result = common_pb2.GraspResult.Name(response.outcome.result).removeprefix("GRASP_RESULT_")
    header = response.header
    figure.suptitle(
        f"{header.episode_id}  {header.robot_id}  {_model(header.model)}  "
        f"outcome {result.lower()}, label {_label(response)}",
        fontsize=9,
    )
    return _save(plt, figure, path)


def contact_sheet(stub, episode_ids: Sequence[str], path: Path) -> Path:
    """Draws x0 and the last x_t of each episode, one row each, with its label.

    Raises:
        ValueError: no episode to draw.
    """
    if not episode_ids:
        raise ValueError("no episode matches: nothing to draw")
    plt = _pyplot()
    figure, axes = plt.subplots(
        len(episode_ids), 2, figsize=(5.2, 2.3 * len(episode_ids)), squeeze=False
    )
    for (first, last), episode_id in zip(axes, episode_ids, strict=True):
        response = _fetch(stub, episode_id)
        first.imshow(decode_image(response.header.x0))
        last.imshow(decode_image(response.steps[-1].image) if response.steps else 0)
        for axis in (first, last):
            axis.set_xticks([])
            axis.set_yticks([])
        first.set_ylabel(episode_id, fontsize=6)
        first.set_title("x0", fontsize=7)
        last.set_title(
            f"{response.header.robot_id} {_model(response.header.model)}: {_label(response)}",
            fontsize=7,
        )
    return _save(plt, figure, path)
