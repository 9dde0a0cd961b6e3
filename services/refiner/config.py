"""The refiner service's settings."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, ServerConfig, setting

MODES = ("graspgan", "rcan")  # the export kinds (models.generators.export.KINDS)


@dataclass(frozen=True)
class RefinerConfig(ServerConfig):
    """Refiner: serves GraspGAN (sim -> real-looking) and RCAN (randomized -> canonical) generators."""

    port: int = setting(50055, "gRPC port; 0 picks a free one (see port_file).")
    model_base_path: str = setting(
        "var/models", "Model repository: versions in <path>/<model>/<int>/.", required=True
    )
    modes: tuple = setting(MODES, "Modes served, comma-separated: graspgan, rcan.")
    graspgan_model: str = setting("graspgan", "Model name of the GraspGAN generator.")
    rcan_model: str = setting("rcan", "Model name of the RCAN generator.")
    poll_interval_s: float = setting(
        2.0, "How often the model base path is scanned for new versions, seconds."
    )
    settle_s: float = setting(
        1.0, "A version folder modified within this many seconds is not loaded yet."
    )
    max_images: int = setting(64, "Most images in one Refine request.")
    max_pixels: int = setting(
        4 * 1024 * 1024, "Most pixels (images x height x width) in one Refine request."
    )
    max_image_side: int = setting(2048, "Largest image width or height accepted, pixels.")
    warmup_image_size: int = setting(
        64, "Image side used to warm up a model whose metadata gives none, pixels."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = sorted(set(self.modes) - set(MODES))
        if not self.modes or unknown:
            raise ConfigError(f"modes={','.join(self.modes)!r}; use one or both of {MODES}")
        if not self.graspgan_model or not self.rcan_model:
            raise ConfigError("graspgan_model and rcan_model must name a model folder")
        for name in ("max_images", "max_pixels", "max_image_side", "warmup_image_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.poll_interval_s <= 0 or self.settle_s < 0:
            raise ConfigError("poll_interval_s must be positive and settle_s not negative")

    def model_name(self, mode: str) -> str:
        """The model folder a mode's versions live in."""
        return self.graspgan_model if mode == "graspgan" else self.rcan_model
