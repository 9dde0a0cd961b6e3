"""TensorProto in and out, checked against a model signature before anything runs."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from services.common.errors import InvalidArgument, ResourceExhausted

DEFAULT_SIGNATURE = "serving_default"
# serving_default of the grasp model in two halves (export.ServingModule): the image
# trunk once per image pair, then the motions scored against its features per call.
FEATURES_SIGNATURE = "image_features"
SCORE_FEATURES_SIGNATURE = "score_features"


def input_specs(signature) -> dict[str, tf.TensorSpec]:
    """Input name → TensorSpec of a loaded signature function."""
    return dict(signature.structured_input_signature[1])


def to_array(name: str, proto: tensor_pb2.TensorProto, max_bytes: int) -> np.ndarray:
    """Decodes one request tensor; malformed protos become INVALID_ARGUMENT.

    A TensorProto may declare far more elements than it carries (the decoder
    repeats the last value), so the declared size is bounded before decoding:
    a few bytes on the wire must not become gigabytes in memory.

    Raises:
        InvalidArgument: a malformed proto or negative dimension.
        ResourceExhausted: the tensor would decode to more than `max_bytes`.
    """
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"input {name!r} declares a negative dimension {dims}")
    try:
        itemsize = tf.dtypes.as_dtype(proto.dtype).size if proto.dtype != tf.string else 1
    except TypeError:
        raise InvalidArgument(f"input {name!r} has an unknown dtype {proto.dtype}") from None
    declared = int(np.prod(dims, dtype=np.float64)) * itemsize
    if declared > max_bytes:
        raise ResourceExhausted(
            f"input {name!r} declares shape {dims}, {declared} bytes once decoded; this "
            f"predictor decodes at most {max_bytes} bytes per input (max_message_bytes)"
        )
    try:
        return tf.make_ndarray(proto)
    except Exception as err:  # noqa: BLE001 - TF raises several types for bad protos
        raise InvalidArgument(f"input {name!r} is not a valid TensorProto: {err}") from None


def to_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """The array as a TensorProto, for a PredictResponse's outputs."""
    return tf.make_tensor_proto(array)


def check_inputs(signature, inputs: dict[str, np.ndarray], signature_name: str) -> None:
    """Names, dtypes and ranks/dimensions must match the signature exactly."""
    specs = input_specs(signature)
    if set(inputs) != set(specs):
        raise InvalidArgument(
            f"signature {signature_name!r} takes inputs {sorted(specs)}; the request sent {sorted(inputs)}"
        )
    for name, spec in specs.items():
        value = inputs[name]
        if value.dtype != spec.dtype.as_numpy_dtype:
            raise InvalidArgument(
                f"input {name!r} has dtype {value.dtype.name}; the signature expects {spec.dtype.name}"
            )
        expected = spec.shape.as_list()
        if len(value.shape) != len(expected) or any(
            e is not None and e != v for e, v in zip(expected, value.shape, strict=True)
        ):
            shown = ["?" if e is None else e for e in expected]
            raise InvalidArgument(
                f"input {name!r} has shape {list(value.shape)}; the signature expects {shown}"
            )


def signature_def_map(saved_model_dir: str) -> meta_graph_pb2.MetaGraphDef:
    """The serving MetaGraphDef of a SavedModel (its signature_def map answers GetModelMetadata)."""
    with open(f"{saved_model_dir}/saved_model.pb", "rb") as f:
        saved = saved_model_pb2.SavedModel.FromString(f.read())
    for graph in saved.meta_graphs:
        if "serve" in graph.meta_info_def.tags:
            return graph
    return saved.meta_graphs[0]
