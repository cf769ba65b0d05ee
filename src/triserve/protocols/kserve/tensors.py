"""Tensor bytes as the v2 protocol lays them out (binary extension and gRPC raw contents)."""

from __future__ import annotations

import math
import struct

import numpy as np

from triserve import datatypes
from triserve.errors import invalid


def element_count(shape: list[int]) -> int:
    return math.prod(shape)


def check_shape(name: str, shape: object) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise invalid(f"input '{name}': shape must be a list of non-negative integers, got {shape!r}")
    return shape


def from_bytes(name: str, datatype: str, shape: list[int], data: bytes | memoryview) -> np.ndarray:
    """Row-major little-endian bytes (BYTES: 4-byte length-prefixed items) to an array."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _deserialize_bytes(name, shape, count, data)
    if not datatypes.is_known(datatype):
        raise invalid(f"input '{name}': unknown datatype '{datatype}'")
    expected = count * datatypes.ELEMENT_SIZE[datatype]
    if len(data) != expected:
        raise invalid(
            f"input '{name}': unexpected size {len(data)} bytes for datatype {datatype} and shape {shape},"
            f" expected {expected} bytes"
        )
    return np.frombuffer(data, dtype=datatypes.to_numpy(datatype).newbyteorder("<")).reshape(shape)


def _deserialize_bytes(name: str, shape: list[int], count: int, data: bytes | memoryview) -> np.ndarray:
    items = []
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise invalid(f"input '{name}': truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise invalid(f"input '{name}': BYTES element of {length} bytes runs past the end of the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise invalid(f"input '{name}': got {len(items)} BYTES elements, but shape {shape} needs {count}")
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array.reshape(shape)


def to_bytes(array: np.ndarray) -> bytes:
    if array.dtype == np.object_:
        parts = []
        for item in array.ravel():
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def from_json(name: str, datatype: str, shape: list[int], data: object) -> np.ndarray:
    """JSON `data` (flat or nested) to an array; element count must match the shape."""
    if not datatypes.is_known(datatype):
        raise invalid(f"input '{name}': unknown datatype '{datatype}'")
    if datatype in ("FP16", "BF16"):
        raise invalid(f"sending {datatype} data via JSON is not supported. Please use the binary data format for input")
    count = element_count(shape)
    try:
        if datatype == "BYTES":
            flat = _flatten(data if isinstance(data, list) else [data])
            array = np.empty(len(flat), dtype=np.object_)
            array[:] = [s.encode() if isinstance(s, str) else _bad_bytes(name, s) for s in flat]
        else:
            array = _numbers(name, datatype, data)
    except (ValueError, TypeError, OverflowError) as e:
        raise invalid(f"input '{name}': data is not a valid {datatype} array: {e}") from None
    if array.size != count:
        raise invalid(
            f"input '{name}': unexpected number of elements {array.size} for shape {shape}, expected {count}"
        )
    return array.reshape(shape)


# What JSON values each kind of datatype takes (numpy kinds of the values as parsed), as Triton.
_JSON_KINDS = {"b": ("b", "booleans"), "i": ("iu", "integers"), "u": ("iu", "integers"), "f": ("iuf", "numbers")}


def _numbers(name: str, datatype: str, data: object) -> np.ndarray:
    """JSON numbers as `datatype`; what numpy would convert silently (1.5 to an integer 1, text
    parsed as numbers, null as NaN, any text as true) is refused, as Triton refuses it."""
    dtype = datatypes.to_numpy(datatype)
    parsed = np.asarray(data)
    kinds, expected = _JSON_KINDS[dtype.kind]
    # Whole numbers may parse as floats (integers beyond int64 beside smaller ones).
    whole = dtype.kind in "iu" and parsed.dtype.kind == "f" and bool(np.all(np.mod(parsed, 1) == 0))
    if parsed.size and parsed.dtype.kind not in kinds and not whole:
        raise invalid(f"input '{name}': data is not a valid {datatype} array: expected JSON {expected}")
    if dtype.kind == "f":
        return parsed.astype(dtype).ravel()
    return np.asarray(data, dtype=dtype).ravel()  # from the JSON values: exact, and out-of-range raises


def _bad_bytes(name: str, value: object) -> bytes:
    raise invalid(f"input '{name}': BYTES data in JSON must be strings, got {value!r}")


def _flatten(data: list) -> list:
    out: list = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def to_json(array: np.ndarray) -> list:
    if array.dtype == np.object_:
        return [b.decode("utf-8", errors="replace") if isinstance(b, bytes) else str(b) for b in array.ravel()]
    if array.dtype == np.float16:
        raise invalid("sending FP16 data via JSON is not supported. Please use the binary data format for output")
    return array.ravel().tolist()
