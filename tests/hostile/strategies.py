"""Hypothesis strategies for almost-valid requests of every HTTP API: each starts from what the
tiny models of tests/inprocess.py (and the archives and SavedModels of test_fuzz.py) take, then
breaks one thing or several: names, datatypes, shapes (huge, negative, not numbers), data of the
wrong type or nesting, parameters of the wrong type, lengths that lie, and plain garbage bytes.

Each request strategy draws a `Request`, sent as is by test_fuzz.py.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
from hypothesis import strategies as st
from PIL import Image


@dataclass
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


# -- JSON building blocks -------------------------------------------------------------------
# Integers at the edges numpy and the protocols care about: int32, int64, uint64 and beyond.
EDGE_INTS = [0, 1, -1, 2, 16, 2**31 - 1, 2**31, -(2**31) - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, -(2**63) - 1,
             2**64, 10**30]
ints = st.one_of(st.integers(-3, 40), st.sampled_from(EDGE_INTS))
floats = st.floats(allow_nan=True, allow_infinity=True)
short_text = st.text(max_size=12)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, short_text)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(short_text, inner, max_size=4), max_leaves=12
)


def dumps(value: Any) -> bytes:
    """JSON as a client might write it: big integers as written, NaN and Infinity as tokens."""
    return json.dumps(value, allow_nan=True).encode()


def deep(depth: int, value: str = "1") -> bytes:
    """A value nested `depth` lists deep."""
    return b"[" * depth + value.encode() + b"]" * depth


garbage = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"{", b"}", b"[1]", b"null", b"\x00" * 8, b"\xff\xfe{}", b'{"inputs": [}',
                     b"NaN", b'{"a": 18446744073709551616}', b"[NaN, 18446744073709551616]"]),
    st.sampled_from([1, 99, 100, 101, 1000, 5000]).map(deep),
    st.sampled_from([99, 100, 101, 1000]).map(lambda n: b'{"inputs": ' + deep(n) + b"}"),
)


def often(value: Any, *others: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`value` three times in four, else one of `others`."""
    return st.one_of(st.just(value), st.just(value), st.just(value), st.one_of(*others))


def mutated(body: bytes) -> st.SearchStrategy[bytes]:
    """`body` cut short, with a byte replaced, or with bytes inserted."""
    n = len(body)
    return st.one_of(
        st.integers(0, n).map(lambda i: body[:i]),
        st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, 255)).map(
            lambda t: body[: t[0]] + bytes([t[1]]) + body[t[0] + 1 :]
        ),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=8)).map(lambda t: body[: t[0]] + t[1] + body[t[0] :]),
    )


@st.composite
def encoded(draw, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """Usually plain; sometimes gzip or deflate (honestly or not), or an unknown encoding."""
    encoding = draw(st.sampled_from([None] * 12 + ["gzip", "deflate", "identity", "br", "x-junk", "gzip, deflate"]))
    if encoding is None:
        return body, headers
    if draw(st.booleans()):  # compressed as the header says
        if encoding == "gzip":
            body = gzip.compress(body)
        elif encoding == "deflate":
            body = zlib.compress(body)
    return body, {**headers, "content-encoding": encoding}


# -- v2 (KServe / Triton) ------------------------------------------------------------------------
V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                "FP64", "BF16", "BYTES"]
# name -> (inputs as (name, datatype, dims without the batch dimension), outputs); every model batches.
V2_MODELS = {
    "simple": ([("INPUT0", "INT32", [16]), ("INPUT1", "INT32", [16])], ["OUTPUT0", "OUTPUT1"]),
    "scores": ([("INPUT", "FP32", [5])], ["OUTPUT"]),
    "doubler": ([("x", "FP32", [3])], ["y"]),
}
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64, "BF16": np.uint16}

dims = st.one_of(ints, st.sampled_from([1.0, 1.5, "16", None, True, [16]]))
# Shapes whose element count is small (often 0) while a dimension or the byte size is beyond what
# numpy (or int64) can hold.
HUGE_SHAPES = [[0, 2**63], [0, 2**62, 2**62], [0, 2**64], [0, 2**63 - 1], [1, 2**31, 0], [0, 10**30, 16],
               [2**32, 0], [0, -1], [-1, 16], [0, 2**62, 2**62, 2**62]]
shapes = st.one_of(st.lists(dims, max_size=5), st.sampled_from(HUGE_SHAPES), json_values)
datatypes = st.one_of(st.sampled_from(V2_DATATYPES), st.sampled_from(["int32", "FP128", "", "TYPE_INT32"]), json_values)


def _count(shape: object) -> int | None:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return None
    return math.prod(shape)


def _element(datatype: object) -> st.SearchStrategy[Any]:
    """Values of the JSON type `datatype` takes (in range or not)."""
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return short_text
    if isinstance(datatype, str) and datatype.startswith(("INT", "UINT")):
        return st.one_of(st.integers(-100, 100), st.sampled_from(EDGE_INTS))
    return st.one_of(st.floats(-1e6, 1e6, width=32), st.integers(-100, 100))


def _nest(values: list, shape: list[int]) -> Any:
    if len(shape) <= 1 or not values:
        return values
    step = len(values) // shape[0] if shape[0] else len(values)
    return [_nest(values[i : i + step], shape[1:]) for i in range(0, len(values), max(step, 1))]


@st.composite
def v2_tensor(draw, name: str, datatype: str, inner: list[int]) -> dict[str, Any]:
    """One JSON input: the model's own name, datatype and shape most of the time."""
    batch = draw(st.integers(0, 9))
    name = draw(often(name, short_text))
    datatype = draw(often(datatype, datatypes))
    shape = draw(st.one_of(st.just([batch, *inner]), st.just([batch, *inner]), st.sampled_from(HUGE_SHAPES), shapes))
    count = _count(shape)
    element = _element(datatype)
    sized = count if count is not None and count <= 200 else draw(st.integers(0, 20))
    exact = st.lists(element, min_size=sized, max_size=sized)
    nested = exact.map(lambda v: _nest(v, shape)) if count is not None else exact
    data = draw(st.one_of(
        exact, exact, exact, nested,
        st.one_of(st.lists(element, max_size=40), st.lists(json_values, max_size=6), json_values),
    ))
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    if draw(st.integers(0, 5)) == 0:
        del tensor[draw(st.sampled_from(sorted(tensor)))]
    if draw(st.integers(0, 5)) == 0:
        tensor["parameters"] = draw(st.one_of(json_values, st.fixed_dictionaries({"binary_data_size": json_values})))
    return tensor


@st.composite
def v2_outputs(draw, outputs: list[str]) -> list[Any]:
    def one(name: str) -> st.SearchStrategy[Any]:
        parameters = st.fixed_dictionaries({}, optional={"classification": json_values, "binary_data": json_values})
        return st.fixed_dictionaries({"name": st.one_of(st.just(name), short_text, json_values)},
                                     optional={"parameters": st.one_of(parameters, json_values)})

    return draw(st.lists(st.one_of(*(one(n) for n in outputs), json_values), max_size=4))


request_parameters = st.one_of(
    st.fixed_dictionaries({}, optional={key: json_values for key in
                                        ("priority", "timeout", "binary_data_output", "sequence_id", "sequence_start")}),
    json_values,
)


def v2_path(model: str) -> st.SearchStrategy[str]:
    version = st.sampled_from(["", "", "", "/versions/1", "/versions/2", "/versions/0", "/versions/99999999999999999999"])
    return version.map(lambda v: f"/v2/models/{quote(model, safe='')}{v}/infer")


@st.composite
def v2_body(draw, model: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    _, outputs = V2_MODELS.get(model, V2_MODELS["simple"])
    body: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        body["outputs"] = draw(v2_outputs(outputs))
    if draw(st.booleans()):
        body["parameters"] = draw(request_parameters)
    if draw(st.integers(0, 3)) == 0:
        body["id"] = draw(json_values)
    if draw(st.integers(0, 8)) == 0:
        body["inputs"] = draw(json_values)
    return body


@st.composite
def v2_json_requests(draw) -> Request:
    """POST .../infer with a JSON body (or garbage)."""
    model = draw(st.sampled_from([*V2_MODELS, *V2_MODELS, "missing"]))
    specs, _ = V2_MODELS.get(model, V2_MODELS["simple"])
    inputs = [draw(v2_tensor(*spec)) for spec in specs if draw(st.integers(0, 9))]
    inputs += draw(st.lists(st.one_of(v2_tensor(*specs[0]), json_values), max_size=2))  # duplicates, extras
    body = dumps(draw(v2_body(model, inputs)))
    body = draw(often(body, mutated(body), garbage))
    headers = {"content-type": draw(st.sampled_from(["application/json", "application/json", "text/plain", ""]))}
    body, headers = draw(encoded(body, headers))
    return Request("POST", draw(v2_path(model)), body, headers)


@st.composite
def v2_blob(draw, datatype: object, shape: object) -> bytes:
    """Binary tensor data: the right size for datatype and shape most of the time."""
    count = _count(shape)
    if datatype == "BYTES" and count is not None and count <= 64:
        items = draw(st.lists(st.binary(max_size=8), min_size=count, max_size=count))
        blob = b"".join(struct.pack("<I", len(i)) + i for i in items)
        lying = st.tuples(st.sampled_from([0, 1, 2**31, 2**32 - 1]), st.binary(max_size=8)).map(
            lambda t: struct.pack("<I", t[0]) + t[1]
        )
        return draw(st.one_of(st.just(blob), st.just(blob), lying, st.binary(max_size=16)))
    if isinstance(datatype, str) and datatype in NUMPY and count is not None and count <= 512:
        size = count * np.dtype(NUMPY[datatype]).itemsize
        return draw(st.one_of(st.binary(min_size=size, max_size=size), st.binary(min_size=size, max_size=size),
                              st.binary(max_size=64)))
    return draw(st.binary(max_size=64))


@st.composite
def v2_binary_requests(draw) -> Request:
    """POST .../infer with Triton's binary tensor extension: a JSON header, then the tensors' bytes,
    the header length in Inference-Header-Content-Length (true, off by some, or not a number)."""
    model = draw(st.sampled_from([*V2_MODELS, *V2_MODELS, "missing"]))
    specs, outputs = V2_MODELS.get(model, V2_MODELS["simple"])
    inputs, blobs = [], []
    for name, datatype, inner in specs:
        if not draw(st.integers(0, 9)):
            continue
        tensor = draw(v2_tensor(name, datatype, inner))
        tensor.pop("data", None)
        blob = draw(v2_blob(tensor.get("datatype"), tensor.get("shape")))
        size = draw(st.one_of(st.just(len(blob)), st.just(len(blob)), ints, json_values))
        if draw(st.integers(0, 9)):
            tensor["parameters"] = {"binary_data_size": size}
        inputs.append(tensor)
        blobs.append(blob)
    body = draw(v2_body(model, inputs))
    if draw(st.booleans()):
        body["parameters"] = {"binary_data_output": draw(st.one_of(st.just(True), json_values))}
    header = dumps(body)
    content = header + b"".join(blobs) + draw(st.sampled_from([b""] * 6 + [b"\x00", b"extra bytes"]))
    true = len(header)
    length = draw(st.one_of(
        st.just(str(true)), st.just(str(true)), st.just(str(true)),
        st.integers(-3, 3).map(lambda d: str(true + d)),
        st.sampled_from(["0", "-1", str(len(content)), str(len(content) + 1), str(2**64), "abc", "", " 12", "1e3",
                         "0x10", "12, 13", "\u0661\u0662"]),
    ))
    headers = {"content-type": "application/octet-stream"}
    if draw(st.integers(0, 9)):
        headers["inference-header-content-length"] = length
    content, headers = draw(encoded(content, headers))
    return Request("POST", draw(v2_path(model)), content, headers)


# -- v2 model repository (explicit mode) ----------------------------------------------------
TRITON_TYPES = ["TYPE_INT32", "TYPE_FP32", "TYPE_STRING", "TYPE_BOOL", "TYPE_INVALID", "TYPE_INT128", 7, None]
model_names = st.one_of(st.sampled_from([*V2_MODELS, *V2_MODELS, "missing", "..", ".", "simple/../scores", "a" * 300]),
                        short_text.filter(bool))


@st.composite
def model_configs(draw) -> Any:
    """A model configuration in Triton's JSON form: mostly plausible, with wrong types mixed in."""
    tensor = st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["INPUT0", "INPUT1", "OUTPUT0", "x", "y"]), json_values)},
        optional={"data_type": st.one_of(st.sampled_from(TRITON_TYPES), json_values), "dims": shapes},
    )
    config = draw(st.fixed_dictionaries({}, optional={
        "name": st.one_of(model_names, json_values),
        "platform": st.one_of(st.sampled_from(["onnxruntime_onnx", "pytorch_libtorch", "tensorflow_savedmodel", "nope"]),
                              json_values),
        "backend": st.one_of(st.sampled_from(["onnxruntime", "python", "nope"]), json_values),
        "max_batch_size": st.one_of(ints, json_values),
        "input": st.one_of(st.lists(tensor, max_size=3), json_values),
        "output": st.one_of(st.lists(tensor, max_size=3), json_values),
        "instance_group": st.one_of(st.lists(st.fixed_dictionaries(
            {}, optional={"count": st.integers(-2, 3), "kind": st.sampled_from(["KIND_CPU", "KIND_GPU", "KIND_X", 1])}
        ), max_size=2), json_values),
        "version_policy": st.one_of(st.sampled_from([{"latest": {"num_versions": 1}}, {"all": {}},
                                                     {"specific": {"versions": [1]}}, {"specific": {"versions": [7]}}]),
                                    json_values),
        "dynamic_batching": st.one_of(st.just({}), json_values),
        "parameters": json_values,
    }))
    return draw(st.one_of(st.just(config), st.just(config), json_values))


ONNX_GARBAGE = [b"", b"not an ONNX model", b"\x08\x07\x12\x00", bytes(range(256))]
file_names = st.sampled_from(["file:1/model.onnx", "file:1/model.onnx", "file:config.pbtxt", "file:../escape.onnx",
                              "file:/etc/escape", "file:1/" + "n" * 300, "file:", "file:1/../../x"])
file_contents = st.one_of(st.sampled_from(ONNX_GARBAGE).map(lambda b: base64.b64encode(b).decode()), json_values)


@st.composite
def load_parameters(draw) -> Any:
    parameters = draw(st.fixed_dictionaries({}, optional={
        "config": st.one_of(model_configs().map(lambda c: json.dumps(c, allow_nan=True)), json_values),
        "unload_dependents": json_values,
    }))
    for name in draw(st.lists(file_names, max_size=2)):
        parameters[name] = draw(file_contents)
    return draw(st.one_of(st.just(parameters), st.just(parameters), json_values))


@st.composite
def repository_requests(draw) -> Request:
    action = draw(st.sampled_from(["index", "load", "load", "unload"]))
    if action == "index":
        path = "/v2/repository/index"
        body = st.one_of(st.just(b""), st.fixed_dictionaries({}, optional={"ready": json_values}).map(dumps))
    else:
        path = f"/v2/repository/models/{quote(draw(model_names), safe='')}/{action}"
        body = st.one_of(st.just(b""), st.fixed_dictionaries({}, optional={"parameters": load_parameters()}).map(dumps),
                         json_values.map(dumps))
    content = draw(st.one_of(body, body, body, body, garbage))
    return Request("POST", path, content, {"content-type": "application/json"})


# -- TF Serving REST -------------------------------------------------------------------------------
TF_MODELS = ["simple", "scores", "doubler", "classifier", "regressor", "missing"]
number_lists = st.lists(st.one_of(st.integers(-100, 100), st.floats(-100, 100), st.sampled_from(EDGE_INTS)), max_size=20)
b64 = st.binary(max_size=12).map(lambda b: {"b64": base64.b64encode(b).decode()})
tf_values = st.one_of(number_lists, number_lists.map(lambda v: [v]), st.just([[1] * 16]), st.just([1.0] * 16),
                      st.lists(b64, max_size=3), b64, json_values)
tf_names = st.sampled_from(["INPUT0", "INPUT1", "INPUT", "x", "inputs", "text"])
tf_rows = st.one_of(st.dictionaries(tf_names, tf_values, max_size=3), tf_values)


@st.composite
def tf_feature(draw) -> Any:
    return draw(st.one_of(st.floats(allow_nan=True), st.integers(), short_text, st.lists(st.floats(-9, 9), max_size=3),
                          st.lists(st.integers(), max_size=3), st.lists(short_text, max_size=3), b64, json_values))


examples_json = st.lists(st.one_of(st.dictionaries(st.sampled_from(["x", "y", ""]), tf_feature(), max_size=2),
                                   json_values), max_size=4)


@st.composite
def tfserving_requests(draw) -> Request:
    name = draw(st.one_of(st.sampled_from(TF_MODELS), short_text.map(lambda t: quote(t, safe=""))))
    version = draw(st.sampled_from(["", "", "", "/versions/1", "/versions/2", "/versions/0", "/versions/abc",
                                    "/versions/99999999999999999999", "/labels/stable", "/labels/none"]))
    if draw(st.integers(0, 3)):
        verb = draw(st.sampled_from([":predict", ":predict", ":classify", ":regress", ":explain", ""]))
        body = draw(st.fixed_dictionaries({}, optional={
            "instances": st.one_of(st.lists(tf_rows, max_size=4), json_values),
            "inputs": st.one_of(st.dictionaries(tf_names, tf_values, max_size=3), tf_values),
            "signature_name": st.one_of(st.sampled_from(["", "serving_default", "other"]), json_values),
            "examples": examples_json,
            "context": st.one_of(st.dictionaries(st.sampled_from(["x", "y"]), tf_feature(), max_size=2), json_values),
        }))
        content = dumps(body)
        content = draw(often(content, mutated(content), garbage))
        content, headers = draw(encoded(content, {"content-type": "application/json"}))
        return Request("POST", f"/v1/models/{name}{version}{verb}", content, headers)
    suffix = draw(st.sampled_from(["", "/metadata", "/other"]))
    method = draw(st.sampled_from(["GET", "GET", "GET", "PUT", "DELETE"]))
    path = draw(st.one_of(st.just(f"/v1/models/{name}{version}{suffix}"),
                          st.sampled_from(["/v1/models", "/v1/models/", "/v1", "/", "/monitoring/prometheus/metrics"])))
    return Request(method, path)


# -- TorchServe --------------------------------------------------------------------------------------
def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


RED_JPEG = jpeg((250, 0, 0))
ADDER_ROW = json.dumps({"INPUT0": list(range(16)), "INPUT1": [1] * 16}).encode()
CONTENT_TYPES = ["application/json", "text/plain", "text/plain; charset=latin-1", "text/plain; charset=nope",
                 "image/jpeg", "application/octet-stream", "", "multipart/mixed", "x/y; a=b"]
contents = st.one_of(
    st.sampled_from([ADDER_ROW, RED_JPEG, RED_JPEG[:100], b"[1, 2, 3]", b"{}", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]),
    json_values.map(dumps), st.binary(max_size=48),
    st.builds(lambda b, i: b[:i] + b"\x00" + b[i + 1 :], st.just(RED_JPEG), st.integers(0, len(RED_JPEG) - 1)),
)


@st.composite
def multipart(draw) -> tuple[bytes, str]:
    """A multipart/form-data body of a few arbitrary parts; its boundary not always right."""
    boundary = "fuzzboundary"
    chunks = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.one_of(st.sampled_from(["data", "data", "body", "file"]), short_text))
        disposition = f'form-data; name="{name}"' if draw(st.integers(0, 9)) else "form-data"
        if draw(st.booleans()):
            disposition += f'; filename="{draw(st.sampled_from(["x.jpg", "row.json", "", "../../x"]))}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if draw(st.booleans()):
            head += f"Content-Type: {draw(st.sampled_from(CONTENT_TYPES))}\r\n"
        chunks.append(head.encode("utf-8", "replace") + b"\r\n" + draw(contents) + b"\r\n")
    end = draw(st.sampled_from([f"--{boundary}--\r\n", f"--{boundary}--\r\n", "", f"--{boundary}\r\n", "--other--"]))
    body = b"".join(chunks) + end.encode()
    content_type = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}"] * 4
                                        + ["multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=x"]))
    return body, content_type


@st.composite
def urlencoded(draw) -> tuple[bytes, str]:
    values = st.one_of(st.sampled_from([ADDER_ROW.decode(), base64.b64encode(RED_JPEG).decode()]), short_text)
    pairs = draw(st.lists(st.tuples(st.sampled_from(["data", "body", "x"]), values), max_size=4))
    body = draw(st.one_of(st.just(urlencode(pairs).encode()), st.binary(max_size=32)))
    return body, "application/x-www-form-urlencoded"


@st.composite
def raw(draw) -> tuple[bytes, str]:
    return draw(contents), draw(st.sampled_from(CONTENT_TYPES))


@st.composite
def prediction_requests(draw) -> Request:
    model = draw(st.one_of(st.sampled_from(["adder", "adder", "colors", "colors", "missing"]), short_text.filter(bool)))
    version = draw(st.sampled_from(["", "", "", "/1.0", "/2.0", "/x"]))
    body, content_type = draw(st.one_of(multipart(), urlencoded(), raw()))
    return Request(draw(st.sampled_from(["POST", "PUT"])), f"/predictions/{quote(model, safe='')}{version}", body,
                   {"content-type": content_type})


# Worker counts stay small: every worker is a model instance (what a huge count does is its own test).
query_values = st.one_of(st.sampled_from(["0", "1", "2", "-1", "", "abc", "1.5", "true", "false", "1e3", "adder.mar",
                                          "colors.mar", "missing.mar", "../adder.mar", "/etc/passwd",
                                          "http://127.0.0.1:1/x.mar", "all", "inference", "99999999999999999999"]),
                         short_text)
QUERY_KEYS = ["limit", "next_page_token", "min_worker", "max_worker", "synchronous", "url", "model_name",
              "initial_workers", "batch_size", "max_batch_delay", "handler", "type", "response_timeout"]
WORKER_KEYS = {"min_worker", "max_worker", "initial_workers"}


def _few(workers: Any) -> Any:
    """A worker count the server would read as more than 3, replaced by 2."""
    try:
        return 2 if int(workers) > 3 else workers
    except (TypeError, ValueError, OverflowError):
        return workers


@st.composite
def management_requests(draw) -> Request:
    path = draw(st.one_of(
        st.sampled_from(["/models", "/models", "/models/adder", "/models/adder/1.0", "/models/adder/all",
                         "/models/adder/1.0/set-default", "/models/adder/9.9/set-default", "/models/colors",
                         "/models/missing", "/models/adder/9.9", "/token", "/models/colors/1.0"]),
        short_text.map(lambda t: "/models/" + quote(t, safe="")),
    ))
    method = draw(st.sampled_from(["GET", "GET", "PUT", "PUT", "POST", "DELETE"]))
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), query_values, max_size=4))
    query = {k: _few(v) if k in WORKER_KEYS else v for k, v in query.items()}
    headers: dict[str, str] = {}
    body = b""
    if draw(st.integers(0, 4)) == 0:  # the same parameters as a JSON body
        fields = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), st.one_of(query_values, json_values), max_size=3))
        fields = {k: _few(v) if k in WORKER_KEYS else v for k, v in fields.items()}
        body = draw(st.one_of(st.just(dumps(fields)), garbage))
        headers["content-type"] = "application/json"
    target = f"{path}?{urlencode(query)}" if query else path
    return Request(method, target, body, headers)
