"""The grasp predictor's settings."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, ServerConfig, setting


@dataclass(frozen=True)
class PredictorConfig(ServerConfig):
    """Grasp predictor: serves grasp-success models over TensorFlow Serving's gRPC API."""

    port: int = setting(8500, "gRPC port (TensorFlow Serving's default); 0 picks a free one.")
    model_base_path: str = setting(
        "var/models", "Model repository: versions in <path>/<model>/<int>/.", required=True
    )
    model_names: tuple = setting(("grasp_success",), "Models to serve, comma-separated.")
    specific_versions: tuple = setting(
        (), "Serve exactly these versions (comma-separated); empty: newest plus labelled."
    )
    poll_interval_s: float = setting(
        2.0, "How often the model base path is scanned for new versions, seconds."
    )
    settle_s: float = setting(
        1.0, "A version folder modified within this many seconds is not loaded yet."
    )
    enable_batching: bool = setting(True, "Merge concurrent Predict calls into one model call.")
    max_batch_size: int = setting(32, "Most image pairs in one model call (and in one request).")
    batch_timeout_ms: float = setting(2.0, "Longest a batch waits for more requests, milliseconds.")
    max_queue: int = setting(
        256, "Requests waiting for a batch before new ones get RESOURCE_EXHAUSTED."
    )
    max_candidates: int = setting(1024, "Most candidate motions per image pair (K).")
    warmup_image_size: int = setting(
        64, "Image side used to warm up a model whose metadata gives none, pixels."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model_names:
            raise ConfigError("model_names is empty: name at least one model to serve")
        try:
            [int(v) for v in self.specific_versions]
        except ValueError:
            raise ConfigError(
                f"specific_versions={self.specific_versions!r} must be integers"
            ) from None
        for name in ("max_batch_size", "max_queue", "max_candidates", "warmup_image_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.poll_interval_s <= 0 or self.batch_timeout_ms < 0 or self.settle_s < 0:
            raise ConfigError(
                "poll_interval_s must be positive; batch_timeout_ms and settle_s not negative"
            )
