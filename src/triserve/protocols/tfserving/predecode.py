"""Tensor values read in a worker process (protocols/transport/processes.py), for requests too
large to decode on the event loop: what the worker sends back is cheap to receive, and is used
only once the inputs' shapes have passed the model's checks, exactly where the server would
have read them itself."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterator

import msgspec
import numpy as np

from triserve import datatypes
from triserve.core.model import Model
from triserve.errors import Code, ServerError
from triserve.protocols.tfserving import json_codec as tfjson
from triserve.protocols.tfserving import tensors as tfserving_tensors
from triserve.protocols.tfserving.servables import request_inputs
from triserve.protocols.transport import offload, spans
from triserve.protocols.transport.grpc import skimmed
from triserve.protocols.transport.processes import Expected, Predecoded
from triserve.protocols.transport.spans import Span
from triserve.protos import tensorflow_pb2 as tf
from triserve.protos import tfserving_apis_pb2 as apis

Read = tuple[dict[str, np.dtype], frozenset[str]]  # what the values are read as: dtypes, required inputs


class JSONValue:
    """A REST request's `instances` or `inputs`, read in a worker process: the shapes its first
    elements show (tfjson.shapes) and its arrays, or the error reading them raised. `read` stands
    in for tfjson.instances_to_arrays / inputs_to_arrays (same arguments)."""

    def __init__(self, shapes: dict[str, list[int]], arrays: dict[str, Predecoded] | Predecoded, key: Read) -> None:
        self.shapes = shapes
        self.arrays = arrays
        self.key = key

    def read(self, dtypes: dict[str, np.dtype], required: set[str]) -> dict[str, np.ndarray]:
        if (dtypes, frozenset(required)) != self.key:
            raise ServerError("the model changed while the request was read; try again", Code.UNAVAILABLE)
        if isinstance(self.arrays, Predecoded):
            self.arrays.value()  # raises what reading raised
            raise AssertionError("a JSONValue without arrays holds an error")
        return {name: array.value() for name, array in self.arrays.items()}


def json_inputs_for(servables: Any, name: str, version: int | None, label: str | None) -> Callable[[dict[str, Any]], None]:
    """The predecode step (transport.json_input.parse_with) of a REST request to this servable.
    A servable that does not resolve gets its values dropped unread: the request fails on that."""
    try:
        model = servables.model(name, version, label)
    except ServerError:
        return functools.partial(json_inputs, model=None)
    if model.signatures:  # a SavedModel: the document's signature_name picks the inputs (tfserving/servables.py)
        return functools.partial(signature_json_inputs, signatures=signature_reads(model))
    dtypes = {t.name: datatypes.numpy_of_config(t.data_type) for t in model.config.input}
    required = frozenset(t.name for t in model.config.input if not t.optional)
    return functools.partial(json_inputs, model=(dtypes, required, Expected.of(model, split=True)))


def signature_reads(model: Model) -> dict[str, tuple[dict[str, np.dtype], frozenset[str], None]]:
    """Each signature's dtypes and required inputs, as TFServingREST.predict reads them (no
    Expected: a signature's shapes are TensorFlow's to check)."""
    reads = {}
    for name, signature in model.signatures.items():
        try:
            dtypes, required = request_inputs(model, signature)
        except ServerError:  # an input triserve cannot hold: predict refuses it before reading
            continue
        reads[name] = (dtypes, frozenset(required), None)
    return reads


def signature_json_inputs(document: dict[str, Any], signatures: dict[str, tuple[dict[str, np.dtype], frozenset[str], None]]) -> None:
    """json_inputs for the signature the document names ("" is serving_default)."""
    name = document.get("signature_name", "")
    chosen = signatures.get(name or "serving_default") if isinstance(name, str) else None
    json_inputs(document, chosen)


def json_inputs(document: dict[str, Any], model: tuple[dict[str, np.dtype], frozenset[str], Expected | None] | None) -> None:
    """In a worker process: `instances` or `inputs` read as TFServingREST.predict reads them
    (the same shapes, the same refusal by the model's checks before values are read, the same
    codec), or dropped unread when the servable did not resolve. A large value may come as a
    spans.Span: its shapes are read from its outline, and it is parsed only if they pass."""
    keys = [key for key in ("instances", "inputs") if key in document]
    if len(keys) != 1:
        for key in keys:  # both: refused before any value is read
            document[key] = Predecoded.skipped(None)
        return
    key = keys[0]
    if model is None:
        document[key] = Predecoded.skipped(None)
        return
    dtypes, required, expected = model
    rows = key == "instances"
    value = document[key]
    if isinstance(value, Span):
        shapes = tfjson.shapes(value.outline(), list(dtypes), rows)
        if _refused(shapes, required, dtypes, expected):
            document[key] = JSONValue(shapes, Predecoded.skipped(None), (dtypes, required))
            return
        value = value.load()
    shapes = tfjson.shapes(value, list(dtypes), rows)
    arrays: dict[str, Predecoded] | Predecoded
    if _refused(shapes, required, dtypes, expected):
        arrays = Predecoded.skipped(None)  # the server's check_inputs refuses these shapes
    else:
        read = tfjson.instances_to_arrays if rows else tfjson.inputs_to_arrays
        try:
            arrays = {n: Predecoded(None, array=a) for n, a in read(value, dtypes, set(required)).items()}
        except ServerError as e:
            arrays = Predecoded(None, error=e)
        except Exception:
            arrays = Predecoded.skipped(None)
    document[key] = JSONValue(shapes, arrays, (dtypes, required))


class _Document(msgspec.Struct):
    instances: msgspec.Raw = msgspec.Raw()
    inputs: msgspec.Raw = msgspec.Raw()


def _tensor_places(document: Any) -> Iterator[tuple[Any, Any]]:
    for key in ("instances", "inputs"):
        if isinstance(document, dict) and key in document:
            yield document, key


# The document's `instances` or `inputs`, read as tfjson.parse reads them.
SPAN_LAYOUT = spans.Layout(
    msgspec.json.Decoder(_Document), lambda d: [d.instances, d.inputs], _tensor_places, 1, tfjson.loads)
json_inputs.span_layout = SPAN_LAYOUT  # type: ignore[attr-defined]  # a large value may come unparsed


def _refused(shapes: dict[str, list[int]], required: frozenset[str], dtypes: dict[str, np.dtype],
             expected: Expected | None) -> bool:
    """Whether TFServingREST.predict's check_inputs refuses these shapes (it checks them only
    for large values that name every required input and nothing else)."""
    work = sum(math.prod(shape) for shape in shapes.values())
    return (
        work > offload.OFF_LOOP_SIZE
        and required <= shapes.keys() <= dtypes.keys()
        and expected is not None
        and not all(expected.worth_reading(n, expected.inputs[n][0], shape) for n, shape in shapes.items())
    )


def predict_request(
    data: bytes, max_message_bytes: int, max_bytes_elements: int
) -> tuple[bytes, dict[str, Predecoded], dict[str, Any]]:
    """In a worker process (transport.grpc's `large` decoder of Predict): the PredictRequest
    without its tensors' values, and each input's values read as TFServingGRPC reads them
    (tensors.to_numpy), or the error that raised. The values are parsed only when some input
    needs them: not for headers the server refuses anyway, nor for BYTES tensors whose shape
    holds more elements than allowed (--grpc-max-bytes-elements)."""
    request = _SKIMMED.FromString(data)  # values left unread
    predecoded: dict[str, Predecoded] = {}
    wanted = []
    for name, tensor in request.inputs.items():
        try:
            datatype, shape = tfserving_tensors.header(name, tensor)
        except ServerError as e:
            predecoded[name] = Predecoded(None, error=e)  # the server refuses the header itself
            continue
        if datatype == "BYTES" and math.prod(shape) > max_bytes_elements:
            predecoded[name] = Predecoded.skipped(None)  # refused by their count, unread
        else:
            wanted.append(name)
    if wanted:
        whole = apis.PredictRequest.FromString(data)
        for name in wanted:
            predecoded[name] = Predecoded.of(None, tfserving_tensors.to_numpy, name, whole.inputs[name], max_message_bytes)
    request.DiscardUnknownFields()
    return request.SerializeToString(), predecoded, {}


# What TFServingGRPC's Predict parses first (grpc.SKIMMED_PREDICT_REQUEST): tensors' values unread.
_SKIMMED = skimmed(
    apis.PredictRequest,
    {tf.TensorProto.DESCRIPTOR.full_name: [f.name for f in tf.TensorProto.DESCRIPTOR.fields if f.number > 3]},
)
