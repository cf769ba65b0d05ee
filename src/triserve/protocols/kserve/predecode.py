"""Tensor contents read in a worker process (protocols/transport/processes.py), for requests too
large to decode on the event loop (v2 JSON bodies, ModelInfer messages): what the worker sends
back is cheap to receive, and is used only once the inputs' names, datatypes and shapes have
passed the model's checks in the server."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterator

import msgspec
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from triserve.core.model import Model
from triserve.protocols.kserve import tensors
from triserve.protocols.kserve.contents import from_contents
from triserve.protocols.transport import offload, spans
from triserve.protocols.transport.grpc import skimmed
from triserve.protocols.transport.processes import Expected, Predecoded, WithPredecoded
from triserve.protocols.transport.spans import Span


def json_inputs_for(model: Model) -> Callable[[dict[str, Any]], None]:
    """The predecode step (transport.json_input.parse_object) of an infer request to `model`."""
    return functools.partial(json_inputs, expected=Expected.of(model))


def json_inputs(document: dict[str, Any], expected: Expected) -> None:
    """In a worker process: each input's JSON `data` becomes its array (read as the input's own
    datatype and shape say, as `tensors.from_json` reads it in the server), or the error reading
    it raised; inputs the model refuses by their name, datatype or shape stay unread."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list):
        return
    for item in inputs:
        if isinstance(item, dict) and "data" in item:
            name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
            if expected.worth_reading(name, datatype, shape):
                item["data"] = Predecoded.of(None, _from_json, name, datatype, shape, item["data"])
            else:
                item["data"] = Predecoded.skipped(None)  # a Span stays unparsed


class _Input(msgspec.Struct):
    data: msgspec.Raw = msgspec.Raw()


class _Document(msgspec.Struct):
    inputs: list[_Input] = []


def _data_places(document: Any) -> Iterator[tuple[Any, Any]]:
    inputs = document.get("inputs") if isinstance(document, dict) else None
    for item in inputs if isinstance(inputs, list) else ():
        if isinstance(item, dict) and "data" in item:
            yield item, "data"


# Each input's `data`, inside the document, its inputs array and the input's object.
SPAN_LAYOUT = spans.Layout(msgspec.json.Decoder(_Document), lambda d: [item.data for item in d.inputs], _data_places, 3)
json_inputs.span_layout = SPAN_LAYOUT  # type: ignore[attr-defined]  # large data may come unparsed


def _from_json(name: str, datatype: str, shape: list[int], data: object) -> np.ndarray:
    """tensors.from_json, parsing `data` first when it came as a Span (its bytes)."""
    return tensors.from_json(name, datatype, shape, data.load() if isinstance(data, Span) else data)


async def typed_contents(
    request: Any, headers: dict[str, tuple[str, list[int]]], views: dict[str, Any]
) -> dict[str, np.ndarray] | None:
    """The inputs of a large request (see infer_request) that passed the model's checks: typed
    contents as the worker process read them, shared memory inputs from their regions; None for
    any other request (the caller reads it itself)."""
    if not isinstance(request, WithPredecoded):
        return None

    def read() -> dict[str, np.ndarray]:
        inputs = {}
        for tensor in request.inputs:
            datatype, shape = headers[tensor.name]
            if tensor.name in views:
                inputs[tensor.name] = tensors.from_bytes(tensor.name, datatype, shape, views[tensor.name])
            else:
                inputs[tensor.name] = request.predecoded[tensor.name].value()
        return inputs

    return await offload.off_loop(read)


def infer_request(data: bytes, max_bytes_elements: int) -> tuple[bytes, dict[str, Predecoded], dict[str, Any]]:
    """In a worker process (transport.grpc's `large` decoder of ModelInfer and ModelStreamInfer):
    the request without its contents (typed contents left present but empty, so that the
    server's checks see which inputs have them), each input's typed contents read as
    contents.from_contents reads them (or the error that raised), and `raw_input_contents`
    given back as they are. Typed contents are parsed only when some input needs them: not
    BYTES tensors whose shape holds more elements than allowed (--grpc-max-bytes-elements)."""
    request = _SKIMMED.FromString(data)  # typed contents left as bytes
    predecoded: dict[str, Predecoded] = {}
    wanted = set()
    for tensor in request.inputs:
        if not tensor.HasField("contents"):
            continue
        shape = list(tensor.shape)
        if tensor.datatype == "BYTES" and all(d >= 0 for d in shape) and math.prod(shape) > max_bytes_elements:
            predecoded[tensor.name] = Predecoded.skipped(None)  # refused by their count, unread
        else:
            wanted.add(tensor.name)
        tensor.contents = b""  # present, empty
    if wanted:
        for tensor in pb.ModelInferRequest.FromString(data).inputs:
            if tensor.name in wanted and tensor.name not in predecoded:
                predecoded[tensor.name] = Predecoded.of(
                    None, from_contents, tensor.name, tensor.datatype, list(tensor.shape), tensor.contents)
    raw = list(request.raw_input_contents)
    request.ClearField("raw_input_contents")
    return request.SerializeToString(), predecoded, {"raw_input_contents": raw} if raw else {}


# What V2GRPC's ModelInfer parses first (grpc.SKIMMED_INFER_REQUEST): typed contents unread.
_SKIMMED = skimmed(pb.ModelInferRequest, {"inference.ModelInferRequest.InferInputTensor": ["contents"]})
