"""TF Serving's JSON tensors (util/json_tensor.cc): `instances` (row) and `inputs` (columnar)
requests to numpy, outputs to `predictions` / `outputs`, and `examples` to tf.Example."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import numpy as np
import orjson

from triserve.errors import invalid
from triserve.protocols.transport.json_input import check_depth
from triserve.protos import tensorflow_pb2 as tf

# TF Serving writes DT_STRING outputs whose name ends in this as {"b64": ...}, others as text.
BYTES_SUFFIX = "_bytes"
_FLOAT32_EXACT_INT = 2**24  # larger integers do not survive conversion to float
_MAX_DIMS = 64  # numpy's limit (TensorFlow's is 254)


def parse(body: bytes) -> dict[str, Any]:
    """The request object. NaN / Infinity / -Infinity tokens are accepted, as rapidjson does.
    Nesting is checked first, so neither parser ever goes deeper than 100 levels."""
    if not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    check_depth(body)
    data = loads(body)
    if not isinstance(data, dict):
        raise invalid(f"JSON Value: {_short(data)} Is not object")
    return data


def loads(text: bytes | bytearray | memoryview) -> Any:
    """One JSON value (nesting not checked)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # the standard parser takes the NaN and Infinity tokens orjson refuses
            return json.loads(bytes(text))
        except (ValueError, UnicodeDecodeError) as e:
            raise invalid(f"JSON Parse error: {e}") from None


def is_b64(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _named(value: object) -> bool:
    """An object of named tensors (a {"b64": ...} object is a value, not names)."""
    return isinstance(value, dict) and not is_b64(value)


def _short(value: object, limit: int = 200) -> str:
    """At most `limit` characters of the value as JSON, rendered lazily (the standard encoder
    also writes what only the standard parser reads: integers past 64 bits, NaN)."""
    text = ""
    for piece in _ENCODER.iterencode(value):
        text += piece
        if len(text) > limit:
            return text[:limit] + "..."
    return text


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


# -- JSON values to arrays ----------------------------------------------------------------
def to_array(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """A (dense, nested) JSON value as an array of the input's dtype; the JSON types must fit it."""
    if dtype == np.object_:
        return _bytes_array(value, name)
    if isinstance(value, dict) or (isinstance(value, list) and _has_object(value)):
        raise invalid(f"input '{name}': JSON objects are only allowed as {{\"b64\": ...}} values of string inputs")
    target = np.dtype(dtype)
    if isinstance(_first_leaf(value), str):  # refused before numpy copies every string
        raise invalid(f"input '{name}': JSON values of type String are not of expected type: {_tf_name(target)}")
    _check_rank(value, name)
    try:
        array = np.asarray(value)
    except ValueError:
        raise invalid(f"input '{name}': nested lists must be dense (every list at one level the same length)") from None
    kind = array.dtype.kind
    if target.kind == "b":
        ok = kind == "b" or array.size == 0
    elif target.kind in "iu":
        ok = kind in "iu" or array.size == 0
        if ok and array.size and (array.min() < np.iinfo(target).min or array.max() > np.iinfo(target).max):
            raise invalid(f"input '{name}': a value is out of range for {target.name}")
    else:  # floats take any JSON number
        ok = kind in "iuf" or array.size == 0
        if ok and kind in "iu" and target == np.float32 and array.size and np.abs(array).max() > _FLOAT32_EXACT_INT:
            raise invalid(f"input '{name}': Cannot convert JSON value to float without loss of precision.")
    if not ok:
        raise invalid(
            f"input '{name}': JSON values of type {_json_kind(array)} are not of expected type: {_tf_name(target)}"
        )
    return array.astype(target, copy=False)


def _has_object(value: list) -> bool:
    return isinstance(_first_leaf(value), dict)


def _first_leaf(value: Any) -> Any:
    while isinstance(value, list) and value:
        value = value[0]
    return value


def _json_kind(array: np.ndarray) -> str:
    return {"b": "Bool", "i": "Number", "u": "Number", "f": "Number", "U": "String"}.get(array.dtype.kind, "Mixed")


def _tf_name(dtype: np.dtype) -> str:
    return {"f": "float", "i": "int", "u": "uint", "b": "bool"}[dtype.kind] + (
        "" if dtype.kind == "b" else str(dtype.itemsize * 8)
    )


def _bytes_array(value: Any, name: str) -> np.ndarray:
    """Strings (as UTF-8) and {"b64": ...} objects, at one depth, as an object array of bytes."""
    items: list[bytes] = []
    shape = _check_rank(value, name)

    def walk(v: Any, depth: int) -> None:
        if isinstance(v, list):
            if depth >= len(shape) or len(v) != shape[depth]:
                raise invalid(f"input '{name}': nested lists must be dense (every list at one level the same length)")
            for item in v:
                walk(item, depth + 1)
            return
        if depth != len(shape):
            raise invalid(f"input '{name}': JSON Value: {_short(v)} found at incorrect level: {depth + 1}")
        if isinstance(v, str):
            items.append(v.encode())
        elif is_b64(v):
            try:
                items.append(base64.b64decode(v["b64"], validate=True))
            except (binascii.Error, ValueError):
                raise invalid(f"input '{name}': Unable to base64 decode") from None
        else:
            raise invalid(f"input '{name}': JSON Value: {_short(v)} is not of expected type: string")

    walk(value, 0)
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array.reshape(shape)


def _check_rank(value: Any, name: str) -> list[int]:
    shape = _dense_shape(value)
    if len(shape) > _MAX_DIMS:
        raise invalid(f"input '{name}': lists nested {len(shape)} deep; a tensor has at most {_MAX_DIMS} dimensions")
    return shape


def _dense_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def shapes(value: Any, names: list[str], rows: bool) -> dict[str, list[int]]:
    """Each input's shape as the first element at each nesting level shows it (cheap, nothing is
    read), for `instances` (rows: the batch is the instance count) or `inputs`; an input whose
    shape does not show that way (a layout the codec refuses) is left out."""
    if rows:
        if not isinstance(value, list) or not value:
            return {}
        first = value[0]
        if _named(first):
            return {k: [len(value), *_dense_shape(v)] for k, v in first.items() if k in names}
        return {names[0]: [len(value), *_dense_shape(first)]} if len(names) == 1 else {}
    if _named(value):
        return {k: _dense_shape(v) for k, v in value.items() if k in names}
    return {names[0]: _dense_shape(value)} if len(names) == 1 else {}


def instances_to_arrays(instances: Any, dtypes: dict[str, np.dtype], required: set[str]) -> dict[str, np.ndarray]:
    """Row format: each instance is one batch element (a value, or an object of named values)."""
    if not isinstance(instances, list):
        raise invalid("JSON Value: Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid("JSON Value: No values in 'instances' array")
    names = list(dtypes)
    if not _named(instances[0]) and len(names) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per"
            " tensorinfo_map"
        )
    named = _named(instances[0])
    columns: dict[str, list[np.ndarray]] = {}
    for i, item in enumerate(instances):
        if named:
            if not _named(item):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            unknown = [k for k in item if k not in dtypes]
            if unknown or not required <= item.keys():
                raise invalid(
                    f"Failed to process element: {i} of 'instances' list. JSON object: {_short(item)} must only"
                    f" have keys: {','.join(sorted(names))}"
                )
            values = item
        else:
            if _named(item):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
            values = {names[0]: item}
        for key, value in values.items():
            array = to_array(value, dtypes[key], key)
            column = columns.setdefault(key, [])
            if column and column[0].shape != array.shape:
                raise invalid(
                    f"Failed to process element: {i} of 'instances' list. Error: Expecting shape"
                    f" {_shape(column[0].shape)} but got: {_shape(array.shape)}"
                )
            column.append(array)
    if any(len(c) != len(instances) for c in columns.values()):
        raise invalid("every instance must have the same keys")
    return {k: np.stack(c) for k, c in columns.items()}


def inputs_to_arrays(inputs: Any, dtypes: dict[str, np.dtype], required: set[str]) -> dict[str, np.ndarray]:
    """Columnar format: one value per input, batch dimension included."""
    names = list(dtypes)
    if not _named(inputs):
        if len(names) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as"
                " per tensorinfo_map"
            )
        return {names[0]: to_array(inputs, dtypes[names[0]], names[0])}
    for name in names:
        if name in required and name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
    # Keys the signature does not name are ignored, as TF Serving does.
    return {name: to_array(inputs[name], dtypes[name], name) for name in names if name in inputs}


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


# -- arrays to JSON ---------------------------------------------------------------------
def value(array: np.ndarray, name: str) -> Any:
    """An output as orjson serializes it: numpy arrays stay arrays (fast path); strings, and
    floats that are not finite (written NaN / Infinity / -Infinity), become JSON text fragments."""
    if array.dtype == np.object_:
        as_b64 = name.endswith(BYTES_SUFFIX)
        return _nested(array, lambda b: _bytes_json(b, as_b64))
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return orjson.Fragment(_float_text(array))
    if array.ndim == 0:
        return array[()]  # a numpy scalar (orjson takes those, not 0-d arrays)
    return np.ascontiguousarray(array)


def _bytes_json(item: object, as_b64: bool) -> Any:
    data = item if isinstance(item, bytes) else str(item).encode()
    if as_b64:
        return {"b64": base64.b64encode(data).decode()}
    return data.decode("utf-8", errors="replace")


def _nested(array: np.ndarray, convert) -> Any:
    if array.ndim == 0:
        return convert(array.item())
    return [_nested(a, convert) for a in array] if array.ndim > 1 else [convert(x) for x in array]


def _float_text(array: np.ndarray) -> bytes:
    if array.ndim == 0:
        x = array.item()
        if math.isnan(x):
            return b"NaN"
        if math.isinf(x):
            return b"Infinity" if x > 0 else b"-Infinity"
        return orjson.dumps(array.reshape(1), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    return b"[" + b",".join(_float_text(a) for a in array) + b"]"


def predictions(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Row format: one prediction per batch element; several outputs make each one an object."""
    batch = 0
    for name, array in outputs.items():
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if array.shape[0] < 1:
            raise invalid(f"Tensor name: {name} has invalid batch size: {array.shape[0]}")
        if batch and array.shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    if len(outputs) == 1:
        (name, array), = outputs.items()
        return {"predictions": value(array, name)}
    return {"predictions": [{name: value(a[i], name) for name, a in outputs.items()} for i in range(batch)]}


def columnar(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    if len(outputs) == 1:
        (name, array), = outputs.items()
        return {"outputs": value(array, name)}
    return {"outputs": {name: value(a, name) for name, a in outputs.items()}}


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


# -- classify / regress -------------------------------------------------------------------
def examples(data: dict[str, Any], method: str) -> list[bytes]:
    """`examples` (and an optional `context` merged into each) as serialized tf.Example protos."""
    context = _example(data["context"]) if "context" in data else None
    items = data.get("examples")
    if items is None:
        raise invalid(f"JSON Value: When method is {method}, key 'examples' is expected and was not found")
    if not isinstance(items, list):
        raise invalid("JSON Value: Expecting 'examples' value to be an list/array")
    if not items:
        raise invalid("JSON Value: 'examples' value is an empty array")
    result = []
    for item in items:
        example = tf.Example()
        if context is not None:
            example.CopyFrom(context)
        example.MergeFrom(_example(item))
        result.append(example.SerializeToString())
    return result


def _example(obj: Any) -> tf.Example:
    if not isinstance(obj, dict):
        raise invalid(f"Example must be JSON object but got JSON {type(obj).__name__}")
    example = tf.Example()
    for name, content in obj.items():
        feature = example.features.feature[name]
        for v in content if isinstance(content, list) else [content]:
            _add_feature_value(feature, name, v)
    return example


def _add_feature_value(feature: tf.Feature, name: str, v: Any) -> None:
    """Strings and b64 go to bytes_list, decimals to float_list, integers and booleans to int64_list."""
    kind = feature.WhichOneof("kind")
    if isinstance(v, bool) or isinstance(v, int):
        want, add = "int64_list", lambda: feature.int64_list.value.append(int(v))
        if not isinstance(v, bool) and not -(2**63) <= v < 2**63:
            raise invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
    elif isinstance(v, float):
        want, add = "float_list", lambda: feature.float_list.value.append(v)
    elif isinstance(v, str):
        want, add = "bytes_list", lambda: feature.bytes_list.value.append(v.encode())
    elif is_b64(v):
        try:
            data = base64.b64decode(v["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid("Unable to base64 decode") from None
        want, add = "bytes_list", lambda: feature.bytes_list.value.append(data)
    else:
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {type(v).__name__}")
    if kind is not None and kind != want:
        raise invalid(f"Unexpected element type in feature: {name} expecting type: {kind.removesuffix('_list')}")
    add()
