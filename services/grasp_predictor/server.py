"""The grasp predictor: TensorFlow Serving's PredictionService and ModelService over our repository."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
from prometheus_client import Counter, Gauge

# The *_pb2 modules of the two services are imported for their descriptors alone: the
# *_pb2_grpc stubs do not load them, and server reflection can only describe a service
# whose file is in the default descriptor pool.
from tensorflow_serving.apis import (  # noqa: F401 - model_service_pb2, prediction_service_pb2
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from models.grasp_success import tensors
from models.repository import LoadedModel, ModelRepository, RepositoryPoller
from services.common import logs
from services.common.config import load_config
from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound
from services.common.server import ServiceServer, stop_signals
from services.grasp_predictor.batching import DynamicBatcher, run_timed
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.warmup import grasp_warm_up

log = logs.get_logger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

SERVED_VERSION = Gauge(
    "graspfleet_predictor_served_version",
    "1 for each model version being served.",
    ["model", "version"],
)
LABEL_VERSION = Gauge(
    "graspfleet_predictor_label_version", "The version a label points to.", ["model", "label"]
)
MODEL_VERSIONS = Gauge(
    "graspfleet_predictor_model_versions",
    "Version folders of each model in the repository, served or not: 0 on a fleet with no "
    "model yet.",
    ["model"],
)
PREDICT_REQUESTS = Counter(
    "graspfleet_predictor_predict_requests_total",
    "Predict requests that reached a model, by signature.",
    ["model", "signature"],
)

# Signatures of the grasp model whose concurrent requests are merged into one model call
# (the planner's per-step traffic); any other signature runs request by request.
BATCHED_SIGNATURES = (
    tensors.DEFAULT_SIGNATURE,
    tensors.FEATURES_SIGNATURE,
    tensors.SCORE_FEATURES_SIGNATURE,
)

_STATE = {
    "LOADING": get_model_status_pb2.ModelVersionStatus.LOADING,
    "AVAILABLE": get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    "UNLOADING": get_model_status_pb2.ModelVersionStatus.UNLOADING,
    "END": get_model_status_pb2.ModelVersionStatus.END,
}


def _run_signature(loaded: LoadedModel, signature_name: str):
    import tensorflow as tf

    signature = loaded.signatures[signature_name]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = signature(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    return run


class Predictor:
    """Resolves requests to loaded versions and runs them, batched or not."""

    def __init__(self, config: PredictorConfig) -> None:
        self.config = config
        self.repositories = {
            name: ModelRepository(
                Path(config.model_base_path),
                name,
                warm_up=lambda loaded: grasp_warm_up(loaded, config.warmup_image_size),
                specific_versions=tuple(int(v) for v in config.specific_versions),
                settle_s=config.settle_s,
                on_change=self._changed,
                on_unload=self._unloaded,
            )
            for name in config.model_names
        }
        self.on_ready_change = lambda ready: None
        self._count_versions()

    def ready(self) -> bool:
        """True when every configured model has a version serving."""
        return all(repo.loaded() for repo in self.repositories.values())

    def repository(self, name: str) -> ModelRepository:
        """The repository of model `name`.

        Raises:
            NotFound: this predictor does not serve the model.
        """
        if name not in self.repositories:
            raise NotFound(
                f"model {name!r} is not served here (models: {sorted(self.repositories)})"
            )
        return self.repositories[name]

    def resolve(self, spec) -> LoadedModel:
        """The loaded version a TF Serving ModelSpec names: a version, a label, or the newest."""
        repo = self.repository(spec.name)
        # version and version_label are a oneof in ModelSpec: at most one is set.
        version = spec.version.value if spec.HasField("version") else None
        return repo.resolve(version=version, label=spec.version_label or None)

    def _changed(self, repo: ModelRepository) -> None:
        for loaded in repo.loaded():
            if "batchers" not in loaded.resources and self.config.enable_batching:
                loaded.resources["batchers"] = {
                    name: DynamicBatcher(
                        _run_signature(loaded, name),
                        repo.name,
                        self.config.max_batch_size,
                        self.config.batch_timeout_ms / 1000.0,
                        self.config.max_queue,
                    )
                    for name in BATCHED_SIGNATURES
                    if name in loaded.signatures
                }
        SERVED_VERSION.clear()
        LABEL_VERSION.clear()
        for name, each in self.repositories.items():
            for loaded in each.loaded():
                SERVED_VERSION.labels(name, str(loaded.version)).set(1)
            for label, version in each.labels().items():
                LABEL_VERSION.labels(name, label).set(version)
        self._count_versions()
        self.on_ready_change(self.ready())

    def _count_versions(self) -> None:
        """What tells a fleet with no model yet from a model that does not serve."""
        for name, repo in self.repositories.items():
            MODEL_VERSIONS.labels(name).set(len(repo.available_versions()))

    @staticmethod
    def _unloaded(loaded: LoadedModel) -> None:
        for batcher in loaded.resources.pop("batchers", {}).values():
            batcher.close()

    def predict(
        self,
        loaded: LoadedModel,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        timeout_s: float | None,
    ):
        """Runs a signature on `inputs`, through its batcher when batching is on.

        Raises:
            DeadlineExceeded: the deadline passed while the request waited for its batch.
        """
        PREDICT_REQUESTS.labels(loaded.name, signature_name).inc()
        batcher = loaded.resources.get("batchers", {}).get(signature_name)
        if batcher is None:
            return run_timed(_run_signature(loaded, signature_name), inputs, loaded.name)
        future = batcher.submit(inputs)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the batcher skips it if it has not started
            raise DeadlineExceeded(
                "the request's deadline passed while it waited for its batch"
            ) from None


def check_grasp_request(inputs: dict[str, np.ndarray], config: PredictorConfig) -> None:
    """The grasp signatures' own rules: one pair per row, K candidates, bounded sizes.

    Applies to requests of `serving_default` (x0, xt, motions), `image_features`
    (x0, xt) and `score_features` (features, motions).
    """
    if "features" in inputs:
        pairs, what = inputs["features"], "features"
        if not np.isfinite(pairs).all():
            raise InvalidArgument("features contain NaN or infinite values")
    else:
        x0, xt = inputs["x0"], inputs["xt"]
        if x0.shape != xt.shape:
            raise InvalidArgument(
                f"x0 {list(x0.shape)} and xt {list(xt.shape)} must have the same shape"
            )
        pairs, what = x0, "x0"
    rows = pairs.shape[0]
    motions = inputs.get("motions")
    if motions is not None and motions.shape[0] != rows:
        raise InvalidArgument(
            f"motions has {motions.shape[0]} rows but {what} has {rows}; send one row of motions per image pair"
        )
    if rows == 0 or (motions is not None and motions.shape[1] == 0):
        raise InvalidArgument("the request is empty: send at least one image pair and one motion")
    if rows > config.max_batch_size:
        raise InvalidArgument(
            f"{rows} image pairs in one request; this predictor takes at most {config.max_batch_size}"
        )
    if motions is None:
        return
    if motions.shape[1] > config.max_candidates:
        raise InvalidArgument(
            f"{motions.shape[1]} motions per pair; this predictor takes at most {config.max_candidates}"
        )
    if not np.isfinite(motions).all():
        raise InvalidArgument("motions contain NaN or infinite values")


# The inputs of the grasp signatures, which check_grasp_request knows.
_GRASP_INPUTS = ({"x0", "xt", "motions"}, {"x0", "xt"}, {"features", "motions"})


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's PredictionService: Predict and GetModelMetadata."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def Predict(self, request, context):
        """Runs the requested signature on the request's input tensors."""
        loaded = self.predictor.resolve(request.model_spec)
        signature_name = request.model_spec.signature_name or tensors.DEFAULT_SIGNATURE
        if signature_name not in loaded.signatures:
            raise InvalidArgument(
                f"model {loaded.name!r} version {loaded.version} has no signature {signature_name!r} "
                f"(signatures: {sorted(loaded.signatures)})"
            )
        signature = loaded.signatures[signature_name]
        limit = self.predictor.config.max_message_bytes
        inputs = {
            name: tensors.to_array(name, proto, limit) for name, proto in request.inputs.items()
        }
        tensors.check_inputs(signature, inputs, signature_name)
        if set(inputs) in _GRASP_INPUTS:
            check_grasp_request(inputs, self.predictor.config)
        outputs = self.predictor.predict(loaded, signature_name, inputs, context.time_remaining())
        wanted = list(request.output_filter) or list(outputs)
        unknown = set(wanted) - set(outputs)
        if unknown:
            raise InvalidArgument(
                f"output_filter names {sorted(unknown)}; outputs are {sorted(outputs)}"
            )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature_name
        for name in wanted:
            response.outputs[name].CopyFrom(tensors.to_proto(outputs[name]))
        return response

    def GetModelMetadata(self, request, context):
        """The requested version's signature definitions (the one field supported)."""
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidArgument(f"metadata_field {fields}: only ['signature_def'] is supported")
        loaded = self.predictor.resolve(request.model_spec)
        graph = tensors.signature_def_map(str(loaded.path))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in graph.signature_def.items():
            signatures.signature_def[name].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signatures)
        return response


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """TF Serving's ModelService: the state of each version of a model."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def GetModelStatus(self, request, context):
        """The state of the model's versions, or of the one version or label the request names."""
        repo = self.predictor.repository(request.model_spec.name)
        statuses = repo.statuses()
        if request.model_spec.HasField("version"):
            statuses = [s for s in statuses if s.version == request.model_spec.version.value]
            if not statuses:
                raise NotFound(
                    f"model {repo.name!r} has no version {request.model_spec.version.value}"
                )
        elif request.model_spec.version_label:
            statuses = [
                s
                for s in statuses
                if s.version == repo.labels().get(request.model_spec.version_label)
            ]
            if not statuses:
                raise NotFound(
                    f"model {repo.name!r} has no version labelled {request.model_spec.version_label!r}"
                )
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in statuses:
            entry = response.model_version_status.add(
                version=status.version, state=_STATE[status.state]
            )
            if status.error:
                entry.status.error_code = 3  # INVALID_ARGUMENT, as TF Serving reports a bad version
                entry.status.error_message = status.error
        return response


def create_server(config: PredictorConfig) -> ServiceServer:
    """Starts the predictor; SERVING once every model has a version that passed its warm-up."""
    predictor = Predictor(config)
    poller = RepositoryPoller(list(predictor.repositories.values()), config.poll_interval_s)

    def stop() -> None:
        poller.stop()
        for repo in predictor.repositories.values():
            for loaded in repo.loaded():
                predictor._unloaded(loaded)

    def register(grpc_server) -> None:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(predictor), grpc_server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelStatusServicer(predictor), grpc_server
        )

    server = ServiceServer(
        "grasp-predictor", config, register, [PREDICTION_SERVICE, MODEL_SERVICE], on_stop=stop
    )
    predictor.on_ready_change = server.set_serving
    for repo in predictor.repositories.values():
        repo.poll()
    server.set_serving(predictor.ready())
    poller.start()
    return server


def main(argv: list[str] | None = None) -> None:
    """`graspfleet predictor serve`: serves grasp models until SIGTERM."""
    config = load_config(PredictorConfig, "graspfleet predictor serve", argv)
    logs.configure_logging("grasp-predictor", config.log_level, config.log_format)
    stop = stop_signals()  # before the port file: a SIGTERM from then on drains
    create_server(config).wait(stop=stop)
