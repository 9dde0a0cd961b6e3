"""Scoring motions on the grasp-predictor from the outside: the servo-planner's CEM calls this.

The predictor speaks TF Serving's PredictionService, so this client also works
against the official TF Serving image serving the same model folder.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from services.common import logs, upstream
from services.common.errors import FailedPrecondition

log = logs.get_logger(__name__)

# The grasp model's split signatures (models/grasp_success/export.py): a wire contract.
FEATURES_SIGNATURE = "image_features"
SCORE_FEATURES_SIGNATURE = "score_features"


class _Scorer:
    """CEM's scorer for one PlanStep: one Predict call per set of motions.

    Args:
        stub: The predictor's PredictionService.
        request: Model spec, signature and the inputs besides the motions.
    """

    def __init__(self, stub: prediction_service_pb2_grpc.PredictionServiceStub, request) -> None:
        self.stub = stub
        self.request = request
        self.version = request.model_spec.version.value  # the version that answered last

    def __call__(self, motions: np.ndarray, timeout_s: float) -> np.ndarray:
        self.request.inputs["motions"].CopyFrom(tf.make_tensor_proto(motions[None]))
        response = _predict(self.stub, self.request, timeout_s)
        self.version = response.model_spec.version.value
        (output,) = response.outputs.values()
        return tf.make_ndarray(output)[0]


def _predict(stub, request, timeout_s: float):
    """One Predict call; TimeoutError past the deadline, other failures as our errors."""
    try:
        return stub.Predict(request, timeout=timeout_s)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise TimeoutError(
                "the grasp-predictor did not answer within the planning budget"
            ) from None
        raise upstream.as_service_error(err, "grasp-predictor") from None


class GraspScoring:
    """Scores CEM's motions on the grasp-predictor, running the image trunk once per PlanStep.

    A model version with the `image_features` and `score_features` signatures
    gets one image_features call per step and one score_features call (pinned
    to the version that computed the features) per CEM iteration; an older
    version gets serving_default with the images in every call. Which versions
    lack the split is learned from the predictor's answers (a refused signature,
    then GetModelMetadata) and remembered per version, so the predictor stays
    stateless and TF Serving serves the same models.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self._split: dict[tuple[str, int], bool] = {}  # (model, version) -> has the split
        self._label_versions: dict[tuple[str, str], int] = {}  # (model, label) -> last seen

    def scorer(
        self, spec: model_pb2.ModelSpec, x0: np.ndarray, xt: np.ndarray, timeout_s: float
    ) -> _Scorer:
        """A scorer for the images [1, H, W, 3] of one step; may call the predictor once.

        Raises:
            TimeoutError: the features did not come back within `timeout_s`.
            ServiceError: the predictor refused or failed.
        """
        images = {"x0": tf.make_tensor_proto(x0), "xt": tf.make_tensor_proto(xt)}
        if self._may_split(spec):
            request = predict_pb2.PredictRequest(model_spec=spec)
            request.model_spec.signature_name = FEATURES_SIGNATURE
            for name, proto in images.items():
                request.inputs[name].CopyFrom(proto)
            started = time.monotonic()
            try:
                response = _predict(self.stub, request, timeout_s)
            except FailedPrecondition as err:
                # A signature the version lacks: INVALID_ARGUMENT from ours, FAILED_PRECONDITION
                # from TF Serving (both arrive as FailedPrecondition); either may also mean a
                # bad request, which the version's metadata tells apart.
                timeout_s -= time.monotonic() - started
                if self._lacks_split(spec, timeout_s) is not True:
                    raise err from None
            else:
                version = response.model_spec.version.value
                self._learn(spec, version, True)
                score = predict_pb2.PredictRequest()
                score.model_spec.name = spec.name
                score.model_spec.version.value = version  # features fit this version only
                score.model_spec.signature_name = SCORE_FEATURES_SIGNATURE
                (features,) = response.outputs.values()
                score.inputs["features"].CopyFrom(features)
                return _Scorer(self.stub, score)
        request = predict_pb2.PredictRequest(model_spec=spec)
        for name, proto in images.items():
            request.inputs[name].CopyFrom(proto)
        return _Scorer(self.stub, request)

    def served(self, spec: model_pb2.ModelSpec, scorer: _Scorer) -> None:
        """Notes the version that answered a step's last call (a label's current version)."""
        if spec.version_label and scorer.version:
            self._label_versions[(spec.name, spec.version_label)] = scorer.version

    def _may_split(self, spec: model_pb2.ModelSpec) -> bool:
        if spec.HasField("version"):
            version = spec.version.value
        else:
            version = self._label_versions.get((spec.name, spec.version_label))
        return self._split.get((spec.name, version), True)

    def _learn(self, spec: model_pb2.ModelSpec, version: int, split: bool) -> None:
        if self._split.get((spec.name, version)) != split and not split:
            log.info(
                "model version lacks the feature signatures; scoring with serving_default",
                extra={"model": spec.name, "version": version},
            )
        self._split[(spec.name, version)] = split
        if spec.version_label:
            self._label_versions[(spec.name, spec.version_label)] = version

    def _lacks_split(self, spec: model_pb2.ModelSpec, timeout_s: float) -> bool | None:
        """True when the version `spec` resolves to has no split signatures; None if unknown."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=["signature_def"]
        )
        request.model_spec.ClearField("signature_name")
        try:
            response = self.stub.GetModelMetadata(request, timeout=max(timeout_s, 0.001))
            signatures = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signatures)
        except grpc.RpcError:
            return None
        split = {FEATURES_SIGNATURE, SCORE_FEATURES_SIGNATURE} <= set(signatures.signature_def)
        self._learn(spec, response.model_spec.version.value, split)
        return not split
