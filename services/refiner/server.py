"""The refiner service: Refine runs the served GraspGAN or RCAN generator on a batch of images."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from graspfleet.v1 import common_pb2, refiner_pb2, refiner_pb2_grpc
from models.generators import export
from models.generators.serving import generate, warm_up
from models.repository import (
    DEFAULT_LABEL,
    LoadedModel,
    ModelRepository,
    RepositoryPoller,
)
from services.common import auth, logs
from services.common.config import load_config
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.common.images import check_image, decode_image, encode_image
from services.common.metrics import LATENCY_BUCKETS_S
from services.common.server import ServiceServer, stop_signals
from services.refiner.config import RefinerConfig

log = logs.get_logger(__name__)

SERVICE_NAME = refiner_pb2.DESCRIPTOR.services_by_name["Refiner"].full_name
MODES = {
    refiner_pb2.REFINER_MODE_GRASPGAN: export.KIND_GRASPGAN,
    refiner_pb2.REFINER_MODE_RCAN: export.KIND_RCAN,
}
RAW, PNG = common_pb2.Image.ENCODING_RAW, common_pb2.Image.ENCODING_PNG

IMAGES = Counter(
    "graspfleet_refiner_images_total",
    "Images refined, by mode and model version.",
    ["mode", "version"],
)
REFINE_SECONDS = Histogram(
    "graspfleet_refiner_refine_seconds",
    "One Refine call (decode, generate, encode), by mode and model version; seconds.",
    ["mode", "version"],
    buckets=LATENCY_BUCKETS_S,
)
LOADED_VERSIONS = Gauge(
    "graspfleet_refiner_loaded_versions",
    "1 for each generator version loaded and serving.",
    ["mode", "model", "version"],
)
REFUSED_VERSIONS = Gauge(
    "graspfleet_refiner_refused_versions",
    "1 for each version on disk that failed to load or warm up (its error is in the log).",
    ["mode", "model", "version"],
)


class Refiner:
    """The generators of the configured modes, each in its own versioned repository."""

    def __init__(self, config: RefinerConfig) -> None:
        self.config = config
        self.repositories = {
            mode: ModelRepository(
                Path(config.model_base_path),
                config.model_name(mode),
                warm_up=functools.partial(
                    warm_up, kind=mode, default_size=config.warmup_image_size
                ),
                settle_s=config.settle_s,
                on_change=self._changed,
            )
            for mode in config.modes
        }
        self.on_ready_change = lambda ready: None

    def ready(self) -> bool:
        """True once any configured mode has a version serving."""
        return any(repo.loaded() for repo in self.repositories.values())

    def _changed(self, repo: ModelRepository) -> None:
        LOADED_VERSIONS.clear()
        REFUSED_VERSIONS.clear()
        for mode, each in self.repositories.items():
            for loaded in each.loaded():
                LOADED_VERSIONS.labels(mode, each.name, str(loaded.version)).set(1)
            for status in each.statuses():
                if status.error:
                    REFUSED_VERSIONS.labels(mode, each.name, str(status.version)).set(1)
        self.on_ready_change(self.ready())

    def resolve(self, mode: str, model: common_pb2.ModelRef) -> LoadedModel:
        """The version a request names; "stable" (or the newest, unlabelled) when it names none.

        Raises:
            FailedPrecondition: the mode is not served here.
            InvalidArgument: the model name is not the mode's.
            Unavailable: the mode has no version loaded yet.
            NotFound: the version or label is not being served.
        """
        if mode not in self.repositories:
            raise FailedPrecondition(
                f"this refiner serves {', '.join(self.repositories)} only; "
                f"start it with --modes including {mode} to refine in that mode"
            )
        repo = self.repositories[mode]
        if model.name and model.name != repo.name:
            raise InvalidArgument(
                f"model.name={model.name!r}: {mode} mode serves model {repo.name!r}; "
                "leave the name empty or send that one"
            )
        if not repo.loaded():
            raise Unavailable(
                f"no {mode} model is loaded yet: publish a version under "
                f"{repo.folder}/<version>/ and it is served within {self.config.poll_interval_s}s"
            )
        if model.version or model.label:
            return repo.resolve(version=model.version or None, label=model.label or None)
        if DEFAULT_LABEL in repo.labels():
            return repo.resolve(label=DEFAULT_LABEL)
        return repo.resolve()


def decode_request(request: refiner_pb2.RefineRequest, config: RefinerConfig) -> np.ndarray:
    """Checks the request's images and returns them as one uint8 batch [N, H, W, 3].

    Raises:
        InvalidArgument: no images, mixed sizes or encodings, unreadable or
            undersized images, or an output encoding the refiner does not write.
        ResourceExhausted: more images or pixels than one request may carry.
    """
    images = request.images
    if not images:
        raise InvalidArgument("images is empty: send at least one image to refine")
    if len(images) > config.max_images:
        raise ResourceExhausted(
            f"{len(images)} images in one request; send at most {config.max_images} per call"
        )
    if request.output_encoding not in (common_pb2.Image.ENCODING_UNSPECIFIED, RAW, PNG):
        raise InvalidArgument(
            f"output_encoding={request.output_encoding}: use ENCODING_RAW or ENCODING_PNG "
            "(JPEG would corrupt the masks' class ids)"
        )
    first = images[0]
    for i, image in enumerate(images):
        if image.encoding != first.encoding:
            raise InvalidArgument(
                f"images[{i}].encoding={image.encoding} but images[0] has {first.encoding}; "
                "send one encoding per request"
            )
        if (image.width, image.height) != (first.width, first.height):
            raise InvalidArgument(
                f"images[{i}] is {image.width}x{image.height} but images[0] is "
                f"{first.width}x{first.height}; send one size per request"
            )
        check_image(f"images[{i}]", image, channels=3, max_side=config.max_image_side)
    if min(first.width, first.height) < export.MIN_SIDE:
        raise InvalidArgument(
            f"images are {first.width}x{first.height}; each side must be at least "
            f"{export.MIN_SIDE} pixels"
        )
    if len(images) * first.width * first.height > config.max_pixels:
        raise ResourceExhausted(
            f"{len(images)} images of {first.width}x{first.height} exceed {config.max_pixels} "
            "pixels per request; split the batch"
        )
    return np.stack([decode_image(image, f"images[{i}]") for i, image in enumerate(images)])


class RefinerServicer(refiner_pb2_grpc.RefinerServicer):
    """The Refiner service: translates images with a served GraspGAN or RCAN generator."""

    def __init__(self, refiner: Refiner) -> None:
        self.refiner = refiner

    def Refine(self, request, context):
        """Translates the request's images with the generator of its mode and model."""
        auth.authorize(context, (*auth.ARMS, auth.SIM_FARM, "trainer"), "refine images")
        started = time.perf_counter()
        if request.mode not in MODES:
            raise InvalidArgument(
                f"mode={request.mode} is not a refiner mode; use REFINER_MODE_GRASPGAN or "
                "REFINER_MODE_RCAN"
            )
        mode = MODES[request.mode]
        batch = decode_request(request, self.refiner.config)
        loaded = self.refiner.resolve(mode, request.model)
        images, masks = generate(loaded, batch)
        encoding = request.output_encoding or RAW
        response = refiner_pb2.RefineResponse(
            images=[encode_image(image, encoding) for image in images],
            model=common_pb2.ModelRef(
                name=loaded.name, version=loaded.version, label=request.model.label
            ),
        )
        if request.return_masks:
            response.masks.extend(encode_image(mask, encoding) for mask in masks)
        version = str(loaded.version)
        IMAGES.labels(mode, version).inc(len(images))
        REFINE_SECONDS.labels(mode, version).observe(time.perf_counter() - started)
        return response


def create_server(config: RefinerConfig) -> ServiceServer:
    """Starts the refiner; SERVING once any configured mode has a version that passed its warm-up."""
    refiner = Refiner(config)
    poller = RepositoryPoller(list(refiner.repositories.values()), config.poll_interval_s)
    server = ServiceServer(
        "refiner",
        config,
        lambda grpc_server: refiner_pb2_grpc.add_RefinerServicer_to_server(
            RefinerServicer(refiner), grpc_server
        ),
        [SERVICE_NAME],
        on_stop=poller.stop,
    )
    refiner.on_ready_change = server.set_serving
    for repo in refiner.repositories.values():
        repo.poll()
    server.set_serving(refiner.ready())
    poller.start()
    return server


def main(argv: list[str] | None = None) -> None:
    """`graspfleet refiner serve`: serves the generators until SIGTERM."""
    config = load_config(RefinerConfig, "graspfleet refiner serve", argv)
    logs.configure_logging("refiner", config.log_level, config.log_format)
    stop = stop_signals()  # before the port file: a SIGTERM from then on drains
    create_server(config).wait(stop=stop)
