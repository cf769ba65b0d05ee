"""What the TF Serving REST and gRPC front ends share: the model a request names (latest, a
version or a label), its signatures, predict / classify / regress as TF Serving runs them on a
signature, its version status, datatypes and error codes.

Every model is on the TF Serving API, whatever its source. A TensorFlow SavedModel has its own
signatures (every one of its MetaGraph, reached by `signature_name`, run as TF Serving runs them:
the signature's keys, TensorFlow checking shapes); any other model has one, `serving_default`,
which is its config's inputs and outputs. Version labels are the model's aliases (from models.conf).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.core.dataplane import DataPlane, ModelNotFound, NotReady
from triserve.core.model import Model
from triserve.core.status import LOADING, READY, UNAVAILABLE, UNLOADED, UNLOADING
from triserve.core.types import InferRequest, InferResponse, RequestedOutput
from triserve.errors import Code, QueueFull, ServerError, invalid, not_found
from triserve.signatures import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD, SIGNATURE_NAME, Signature, TensorInfo
from triserve.protos import tensorflow_error_pb2 as tf_error
from triserve.protos import tensorflow_pb2 as tf
from triserve.protos import tfserving_apis_pb2 as apis

SERVING_DEFAULT = "serving_default"
# TensorFlow's names for what a classify / regress signature takes and answers.
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_OUTPUTS = "outputs"

# Our error codes as TensorFlow's (a full queue, UNAVAILABLE in the core as in Triton, is
# RESOURCE_EXHAUSTED in TF Serving: see tf_code).
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
    if isinstance(error, QueueFull):
        return tf_error.RESOURCE_EXHAUSTED
    return TF_CODE[error.code]


def tf_dtype(datatype: str) -> int:
    return _TF_DTYPE.get(datatype, tf.DT_INVALID)


def v2_datatype(dtype: int) -> str:
    """A TensorProto dtype as a v2 datatype; dtypes triserve cannot hold are an error."""
    name = _V2_DATATYPE.get(dtype)
    if name is None:
        raise invalid(f"tensor dtype {tf.DataType.Name(dtype) if dtype in tf.DataType.values() else dtype} is not supported")
    return name


def servable(name: str, version: int | None) -> str:
    """How TF Serving names what a request asked for, in its error messages."""
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


# -- signatures -----------------------------------------------------------------------------
def _config_method(model: Model) -> str:
    """What a config's signature can do, read from its layout as TensorFlow's signature builders
    make it: one string input `inputs` of serialized tf.Examples, then `classes`/`scores`
    (classify) or `outputs` (regress); anything else is a predict signature."""
    inputs = list(model.config.input)
    if len(inputs) != 1 or inputs[0].name != CLASSIFY_INPUTS or inputs[0].data_type != mc.TYPE_STRING:
        return PREDICT_METHOD
    outputs = set(model.outputs)
    if outputs and outputs <= {CLASSIFY_CLASSES, CLASSIFY_SCORES}:
        return CLASSIFY_METHOD
    if outputs == {REGRESS_OUTPUTS}:
        return REGRESS_METHOD
    return PREDICT_METHOD


def _config_tensor(model: Model, tensor: mc.ModelInput | mc.ModelOutput) -> TensorInfo:
    shape = ([-1] if model.max_batch_size > 0 else []) + list(tensor.dims)
    return TensorInfo(tensor.name, tf_dtype(datatypes.name_of_config(tensor.data_type)), tuple(shape))


def signatures(model: Model) -> dict[str, Signature]:
    """The model's signatures: a SavedModel's own, else its config as `serving_default`."""
    if model.signatures:
        return model.signatures
    return {
        SERVING_DEFAULT: Signature(
            _config_method(model),
            {t.name: _config_tensor(model, t) for t in model.config.input},
            {t.name: _config_tensor(model, t) for t in model.config.output},
        )
    }


def signature(model: Model, name: str) -> tuple[str, Signature]:
    """The signature a request names ("" is `serving_default`), or TF Serving's error."""
    name = name or SERVING_DEFAULT
    found = signatures(model).get(name)
    if found is None:
        raise ServerError(f'Serving signature key "{name}" not found.', Code.INVALID_ARG)
    return name, found


def method_name(model: Model, signature_name: str = "") -> str:
    return signature(model, signature_name)[1].method_name


def _tensor_info(info: TensorInfo) -> tf.TensorInfo:
    result = tf.TensorInfo(name=info.tensor, dtype=info.dtype)
    if info.shape is None:
        result.tensor_shape.unknown_rank = True
    else:
        result.tensor_shape.SetInParent()
        result.tensor_shape.dim.extend(tf.TensorShapeProto.Dim(size=d) for d in info.shape)
    return result


def signature_def_map(model: Model) -> apis.SignatureDefMap:
    """Every signature with its graph tensor names (`x:0`), as TF Serving's metadata lists them."""
    result = apis.SignatureDefMap()
    for name, sig in signatures(model).items():
        signature_def = result.signature_def[name]
        signature_def.method_name = sig.method_name
        for key, info in sig.inputs.items():
            signature_def.inputs[key].CopyFrom(_tensor_info(info))
        for key, info in sig.outputs.items():
            signature_def.outputs[key].CopyFrom(_tensor_info(info))
    return result


def request_inputs(model: Model, sig: Signature) -> tuple[dict[str, np.dtype], set[str]]:
    """The numpy dtype each input's values are read as, and the inputs a request must give: a
    SavedModel signature's all (as TF Serving), a config's the ones not optional."""
    if not model.signatures:
        dtypes = {t.name: datatypes.numpy_of_config(t.data_type) for t in model.config.input}
        return dtypes, {t.name for t in model.config.input if not t.optional}
    dtypes = {}
    for key, info in sig.inputs.items():
        datatype = _V2_DATATYPE.get(info.dtype, "")
        if not datatypes.is_known(datatype) or datatype == "BF16":
            name = tf.DataType.Name(info.dtype) if info.dtype in tf.DataType.values() else str(info.dtype)
            raise invalid(f"input '{key}': dtype {name} is not supported")
        dtypes[key] = datatypes.to_numpy(datatype)
    return dtypes, set(sig.inputs)


def queue(
    dataplane: DataPlane,
    model: Model,
    inputs: dict[str, np.ndarray],
    outputs: list[RequestedOutput] | None = None,
    signature_name: str = "",
) -> Awaitable[InferResponse]:
    """Queue a request on a signature now; the awaitable answers it. A SavedModel's signature
    runs the request whole, as TF Serving does; a config's `serving_default` runs through the
    config's checks, a batch above the model's max_batch_size split (TF Serving has no batch
    limit; the data plane's rule). Call it right after finding the model."""
    name = signature(model, signature_name)[0]
    if model.signatures:
        request = InferRequest(inputs=inputs, outputs=outputs, parameters={SIGNATURE_NAME: name})
        return dataplane.infer(model, request)
    return dataplane.infer(model, InferRequest(inputs=_one_per_instance(model, inputs), outputs=outputs), split=True)


def _one_per_instance(model: Model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A config input of dims [1] takes TF Serving's one value per instance ([N] becomes [N, 1]):
    `{"instances": [{"b64": ...}]}` for a model taking one encoded image per row."""
    fitted = {}
    for key, array in inputs.items():
        spec = model.inputs.get(key)
        if spec is not None and model.max_batch_size > 0 and list(spec.dims) == [1] and array.ndim == 1:
            array = array.reshape(-1, 1)
        fitted[key] = array
    return fitted


async def infer(
    dataplane: DataPlane,
    model: Model,
    inputs: dict[str, np.ndarray],
    outputs: list[RequestedOutput] | None = None,
    signature_name: str = "",
) -> dict[str, np.ndarray]:
    """queue() and wait for the outputs."""
    return (await queue(dataplane, model, inputs, outputs, signature_name)).outputs


# -- classify and regress, as TF Serving's classifier.cc and regressor.cc ------------------
# A signature is checked by its layout (one `inputs`; `classes` and / or `scores`, or `outputs`),
# not its method_name: TF Serving's default (--enable_signature_method_name_check=false), so TF2
# SavedModels, whose signatures all say tensorflow/serving/predict, classify and regress too.

def _classify_tensors(sig: Signature) -> tuple[list[str], list[str]]:
    if len(sig.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(sig.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if CLASSIFY_INPUTS not in sig.inputs:
        raise invalid(f"No classification inputs found in SignatureDef: {_keys(sig)}")
    outputs = [key for key in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if key in sig.outputs]
    if not outputs:
        raise invalid(
            f'Expected classification signature outputs to contain at least one of "{CLASSIFY_CLASSES}"'
            f' or "{CLASSIFY_SCORES}".'
        )
    return [CLASSIFY_INPUTS], outputs


def _keys(sig: Signature) -> str:
    return f"inputs {{{','.join(sorted(sig.inputs))}}}, outputs {{{','.join(sorted(sig.outputs))}}}"


def _regress_tensors(sig: Signature) -> tuple[list[str], list[str]]:
    if len(sig.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(sig.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if CLASSIFY_INPUTS not in sig.inputs:
        raise invalid(f"No regression inputs found in SignatureDef: {_keys(sig)}")
    if REGRESS_OUTPUTS not in sig.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {_keys(sig)}")
    return [CLASSIFY_INPUTS], [REGRESS_OUTPUTS]


def _examples_tensor(sig: Signature, serialized: list[bytes]) -> np.ndarray:
    """The serialized tf.Examples as the string tensor TF Serving feeds: [N], or [N,1,...] for an
    input declared with a known rank above one."""
    array = np.empty(len(serialized), dtype=np.object_)
    array[:] = serialized
    shape = sig.inputs[CLASSIFY_INPUTS].shape
    if shape is not None and len(shape) > 1:
        array = array.reshape([len(serialized)] + [1] * (len(shape) - 1))
    return array


def _tf_name(array: np.ndarray) -> str:
    try:
        return tf.DataType.Name(tf_dtype(datatypes.from_numpy(array.dtype)))
    except (KeyError, ValueError):
        return str(array.dtype)


def _shape_text(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def classification_result(sig: Signature, count: int, outputs: dict[str, np.ndarray]) -> apis.ClassificationResult:
    """`classes` [N,k] strings and / or `scores` [N,k] floats as N lists of k (label, score)."""
    classes = outputs.get(CLASSIFY_CLASSES) if CLASSIFY_CLASSES in sig.outputs else None
    scores = outputs.get(CLASSIFY_SCORES) if CLASSIFY_SCORES in sig.outputs else None
    for name, array, dtype in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if array is None:
            continue
        if array.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape_text(array)}")
        if _tf_name(array) != dtype:
            raise invalid(f"Expected {name} Tensor of {dtype}. Got: {_tf_name(array)}")
        if array.shape[0] != count:
            raise invalid(f"Expected {name} output batch size of {count}. Got: {array.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    result = apis.ClassificationResult()
    for i in range(count):
        row = result.classifications.add()
        for j in range(width):
            label = classes[i, j] if classes is not None else b""
            row.classes.add(
                label=label.decode("utf-8", errors="replace") if isinstance(label, bytes) else str(label),
                score=float(scores[i, j]) if scores is not None else 0.0,
            )
    return result


def regression_result(count: int, outputs: dict[str, np.ndarray]) -> apis.RegressionResult:
    """`outputs` [N] or [N,1] floats as N values."""
    values = outputs[REGRESS_OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape_text(values)}")
    if values.shape[0] != count:
        raise invalid(f"Input batch size did not match output batch size: {count} vs. {values.shape[0]}")
    if _tf_name(values) != "DT_FLOAT":
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_tf_name(values)}")
    result = apis.RegressionResult()
    result.regressions.extend(apis.Regression(value=float(v)) for v in values.reshape(count))
    return result


def _example_signature(model: Model, signature_name: str) -> Signature:
    found = signatures(model).get(signature_name or SERVING_DEFAULT)
    if found is None:
        raise invalid(f"No signature was found with the name: {signature_name or SERVING_DEFAULT}")
    return found


def _queue_examples(
    dataplane: DataPlane, model: Model, name: str, serialized: list[bytes], outputs: list[str]
) -> Awaitable[InferResponse]:
    sig = signature(model, name)[1]
    requested = [RequestedOutput(key) for key in outputs]
    return queue(dataplane, model, {CLASSIFY_INPUTS: _examples_tensor(sig, serialized)}, requested, name)


async def classify(dataplane: DataPlane, model: Model, signature_name: str, serialized: list[bytes]) -> apis.ClassificationResult:
    """Classify serialized tf.Examples on a classify signature. Call it right after finding the model."""
    sig = _example_signature(model, signature_name)
    _, outputs = _classify_tensors(sig)
    if not serialized:
        raise invalid("Input is empty.")
    result = await _queue_examples(dataplane, model, signature_name, serialized, outputs)
    return classification_result(sig, len(serialized), result.outputs)


async def regress(dataplane: DataPlane, model: Model, signature_name: str, serialized: list[bytes]) -> apis.RegressionResult:
    """Regress serialized tf.Examples on a regress signature. Call it right after finding the model."""
    sig = _example_signature(model, signature_name)
    _regress_tensors(sig)
    if not serialized:
        raise invalid("Input is empty.")
    result = await _queue_examples(dataplane, model, signature_name, serialized, [REGRESS_OUTPUTS])
    return regression_result(len(serialized), result.outputs)


async def multi_inference(
    dataplane: DataPlane, model: Model, tasks: list[tuple[str, str]], serialized: list[bytes]
) -> list[apis.ClassificationResult | apis.RegressionResult]:
    """Classify / regress tasks (signature name, method name) on one model over the same
    examples, as TF Serving's MultiInference checks them; one result per task, in order."""
    seen: set[str] = set()
    plans = []
    for signature_name, method in tasks:
        name = signature_name or SERVING_DEFAULT
        if name in seen:
            raise invalid(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        sig = signatures(model).get(name)
        if sig is None:
            raise invalid(f"Requested signature not found in model graph: {name}")
        if method == CLASSIFY_METHOD:
            plans.append((name, method, sig, _classify_tensors(sig)[1]))
        elif method == REGRESS_METHOD:
            plans.append((name, method, sig, _regress_tensors(sig)[1]))
        else:
            raise ServerError(f"Unsupported signature method_name: {method}", Code.UNSUPPORTED)
    if not serialized:
        raise invalid("Input is empty.")
    # Every task is queued before any is awaited (all on the version just looked up).
    pending: list[Awaitable[InferResponse]] = []
    try:
        for name, _, _, outputs in plans:
            pending.append(_queue_examples(dataplane, model, name, serialized, outputs))
    except BaseException:
        for awaitable in pending:  # queued already: let them finish, nobody reads them
            asyncio.ensure_future(awaitable)
        raise
    answers = await asyncio.gather(*pending)
    return [
        classification_result(sig, len(serialized), answer.outputs)
        if method == CLASSIFY_METHOD
        else regression_result(len(serialized), answer.outputs)
        for (_, method, sig, _), answer in zip(plans, answers)
    ]


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
