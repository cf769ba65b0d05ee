"""What the TF Serving REST and gRPC front ends share: the model a request names (latest, a
version or a label), its signature, its version status, datatypes and error codes.

Every model is on the TF Serving API, whatever its source: its config's inputs and outputs are the
`serving_default` signature. Version labels are the model's aliases (from models.conf).
"""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.core.dataplane import DataPlane, ModelNotFound, NotReady
from triserve.core.model import Model
from triserve.core.status import LOADING, READY, UNAVAILABLE, UNLOADED, UNLOADING
from triserve.core.types import InferRequest, RequestedOutput
from triserve.errors import Code, ServerError, invalid, not_found
from triserve.protos import tensorflow_error_pb2 as tf_error
from triserve.protos import tensorflow_pb2 as tf
from triserve.protos import tfserving_apis_pb2 as apis

SERVING_DEFAULT = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
# TensorFlow's names for what a classify / regress signature takes and answers.
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_OUTPUTS = "outputs"

# Our error codes as TensorFlow's (queue full is RESOURCE_EXHAUSTED in TF Serving; the core
# reports it as UNAVAILABLE like Triton, so it maps to 503 here).
TF_CODE = {
    Code.INVALID_ARG: tf_error.INVALID_ARGUMENT,
    Code.NOT_FOUND: tf_error.NOT_FOUND,
    Code.UNAVAILABLE: tf_error.UNAVAILABLE,
    Code.INTERNAL: tf_error.INTERNAL,
    Code.UNSUPPORTED: tf_error.UNIMPLEMENTED,
    Code.ALREADY_EXISTS: tf_error.ALREADY_EXISTS,
}
# TF Serving's ToHTTPStatusCode (http_server.cc).
HTTP_STATUS = {
    tf_error.OK: 200,
    tf_error.CANCELLED: 499,
    tf_error.UNKNOWN: 500,
    tf_error.INTERNAL: 500,
    tf_error.DATA_LOSS: 500,
    tf_error.INVALID_ARGUMENT: 400,
    tf_error.FAILED_PRECONDITION: 400,
    tf_error.OUT_OF_RANGE: 400,
    tf_error.DEADLINE_EXCEEDED: 504,
    tf_error.NOT_FOUND: 404,
    tf_error.ALREADY_EXISTS: 409,
    tf_error.ABORTED: 409,
    tf_error.PERMISSION_DENIED: 403,
    tf_error.RESOURCE_EXHAUSTED: 429,
    tf_error.UNIMPLEMENTED: 501,
    tf_error.UNAVAILABLE: 503,
    tf_error.UNAUTHENTICATED: 401,
}

# v2 datatype <-> TensorFlow DataType
_TF_DTYPE = {
    "BOOL": tf.DT_BOOL,
    "UINT8": tf.DT_UINT8,
    "UINT16": tf.DT_UINT16,
    "UINT32": tf.DT_UINT32,
    "UINT64": tf.DT_UINT64,
    "INT8": tf.DT_INT8,
    "INT16": tf.DT_INT16,
    "INT32": tf.DT_INT32,
    "INT64": tf.DT_INT64,
    "FP16": tf.DT_HALF,
    "BF16": tf.DT_BFLOAT16,
    "FP32": tf.DT_FLOAT,
    "FP64": tf.DT_DOUBLE,
    "BYTES": tf.DT_STRING,
}
_V2_DATATYPE = {dt: name for name, dt in _TF_DTYPE.items()}

_STATE = {
    READY: apis.ModelVersionStatus.AVAILABLE,
    LOADING: apis.ModelVersionStatus.LOADING,
    UNLOADING: apis.ModelVersionStatus.UNLOADING,
    UNAVAILABLE: apis.ModelVersionStatus.END,
}


def tf_code(error: ServerError) -> int:
    return TF_CODE[error.code]


def tf_dtype(datatype: str) -> int:
    return _TF_DTYPE.get(datatype, tf.DT_INVALID)


def v2_datatype(dtype: int) -> str:
    """A TensorProto dtype as a v2 datatype; dtypes triserve cannot hold are an error."""
    name = _V2_DATATYPE.get(dtype)
    if name is None:
        raise invalid(f"tensor dtype {tf.DataType.Name(dtype) if dtype in tf.DataType.values() else dtype} is not supported")
    return name


def check_signature(signature_name: str) -> None:
    """Every model has one signature, `serving_default`; "" means it too."""
    if signature_name and signature_name != SERVING_DEFAULT:
        raise invalid(f'Serving signature name: "{signature_name}" not found in signature def')


def servable(name: str, version: int | None) -> str:
    """How TF Serving names what a request asked for, in its error messages."""
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


def method_name(model: Model) -> str:
    """What the signature can do, read from its layout as TensorFlow's signature builders make it:
    one string input `inputs` of serialized tf.Examples, then `classes`/`scores` (classify) or
    `outputs` (regress); anything else is a predict signature."""
    inputs = list(model.config.input)
    if len(inputs) != 1 or inputs[0].name != CLASSIFY_INPUTS or inputs[0].data_type != mc.TYPE_STRING:
        return PREDICT_METHOD
    outputs = set(model.outputs)
    if outputs and outputs <= {CLASSIFY_CLASSES, CLASSIFY_SCORES}:
        return CLASSIFY_METHOD
    if outputs == {REGRESS_OUTPUTS}:
        return REGRESS_METHOD
    return PREDICT_METHOD


def _tensor_info(model: Model, tensor: mc.ModelInput | mc.ModelOutput) -> tf.TensorInfo:
    shape = ([-1] if model.max_batch_size > 0 else []) + list(tensor.dims)
    return tf.TensorInfo(
        name=tensor.name,
        dtype=tf_dtype(datatypes.name_of_config(tensor.data_type)),
        tensor_shape=tf.TensorShapeProto(dim=[tf.TensorShapeProto.Dim(size=d) for d in shape]),
    )


def signature_def_map(model: Model) -> apis.SignatureDefMap:
    signature = tf.SignatureDef(method_name=method_name(model))
    for tensor in model.config.input:
        signature.inputs[tensor.name].CopyFrom(_tensor_info(model, tensor))
    for tensor in model.config.output:
        signature.outputs[tensor.name].CopyFrom(_tensor_info(model, tensor))
    result = apis.SignatureDefMap()
    result.signature_def[SERVING_DEFAULT].CopyFrom(signature)
    return result


async def infer(
    dataplane: DataPlane, model: Model, inputs: dict[str, np.ndarray], outputs: list[RequestedOutput] | None = None
) -> dict[str, np.ndarray]:
    """Run a request; TF Serving has no batch limit, so a batch above the model's max_batch_size
    is split (the data plane's rule). Call it right after finding the model."""
    return (await dataplane.infer(model, InferRequest(inputs=inputs, outputs=outputs), split=True)).outputs


class Servables:
    """Looks models up the way TF Serving does, over the data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def version_for(self, name: str, version: int | None, label: str | None) -> int | None:
        if label is None:
            return version
        labels = self.dataplane.aliases(name)
        if label not in labels:
            raise invalid(f"Unrecognized servable version label: {label}")
        return labels[label]

    def model(self, name: str, version: int | None = None, label: str | None = None) -> Model:
        """The ready model; an unknown model or version is NOT_FOUND as in TF Serving."""
        version = self.version_for(name, version, label)
        try:
            return self.dataplane.model(name, version)
        except (ModelNotFound, NotReady):
            raise not_found(f"Servable not found for request: {servable(name, version)}") from None

    def model_spec(self, model: Model, signature_name: str = SERVING_DEFAULT) -> apis.ModelSpec:
        spec = apis.ModelSpec(name=model.name, signature_name=signature_name)
        spec.version.value = model.version
        return spec

    def status(self, name: str, version: int | None = None, label: str | None = None) -> apis.GetModelStatusResponse:
        version = self.version_for(name, version, label)
        try:
            rows = self.dataplane.status(name).versions
        except ModelNotFound:
            rows = {}
        if version is not None:
            if version not in rows:
                raise not_found(f"Could not find version {version} of model {name}")
            rows = {version: rows[version]}
        if not rows:
            raise not_found(f"Could not find any versions of model {name}")
        response = apis.GetModelStatusResponse()
        for v, status in sorted(rows.items()):
            row = response.model_version_status.add(version=v, state=_STATE.get(status.state, apis.ModelVersionStatus.UNKNOWN))
            failed = status.state == UNAVAILABLE and status.reason != UNLOADED
            row.status.error_code = tf_error.UNKNOWN if failed else tf_error.OK
            row.status.error_message = status.reason if failed else ""
        return response
