"""Tensor bytes as the v2 protocol lays them out (binary extension and gRPC raw contents)."""

from __future__ import annotations

import itertools
import struct
import sys

import numpy as np

from triserve import datatypes
from triserve.core.model import element_count
from triserve.errors import ServerError, invalid

# As Triton's HTTP_MAX_JSON_NESTING_DEPTH: JSON `data` nested this deep is refused.
MAX_JSON_DEPTH = 100
_LENGTH = 4  # bytes of the length prefix of each BYTES element


def check_shape(name: str, shape: object) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise invalid(f"input '{name}': shape must be a list of non-negative integers, got {_short(shape)}")
    return shape


def short_text(text: str, limit: int = 64) -> str:
    """A client's text (a header value) for an error message, cut short."""
    return text if len(text) <= limit else text[:limit] + "..."


def _short(value: object, limit: int = 200) -> str:
    """A client's value for an error message, cut short (and never written out whole first)."""
    if isinstance(value, (list, dict)) and len(value) > 16:
        value = value[:16] if isinstance(value, list) else dict(itertools.islice(value.items(), 16))
        return repr(value)[:limit] + "..."
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def from_bytes(name: str, datatype: str, shape: list[int], data: bytes | memoryview) -> np.ndarray:
    """Row-major little-endian bytes (BYTES: 4-byte length-prefixed items) to an array."""
    count = element_count(name, datatype, shape)
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
    if count * _LENGTH > len(data):  # every element has its length prefix: refuse before reading any
        raise invalid(
            f"input '{name}': {len(data)} bytes cannot hold the {count} BYTES elements of shape {shape}"
            f" ({_LENGTH} bytes of length prefix each)"
        )
    items = []
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if len(items) == count:
            raise invalid(f"input '{name}': more BYTES elements than the {count} that shape {shape} needs")
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


def read_cost(datatype: str, nbytes: int) -> int:
    """How much work reading `nbytes` of binary tensor data is (offload.run's size): a
    fixed-size datatype becomes a view of the bytes (from_bytes copies nothing), so it costs
    nothing and needs no thread hop; BYTES elements are split one by one."""
    return nbytes if datatype == "BYTES" else 0


def to_buffer(array: np.ndarray) -> bytes | memoryview:
    """to_bytes without the copy where it can: a little-endian C-contiguous array of a
    fixed-size type is answered as a byte view of its own memory (for `b"".join` or a write)."""
    little = array.dtype.byteorder == "<" or array.dtype.byteorder == "|" or (
        array.dtype.byteorder == "=" and sys.byteorder == "little")
    if array.dtype != np.object_ and array.flags.c_contiguous and little:
        return memoryview(array.reshape(-1).view(np.uint8))
    return to_bytes(array)


def to_bytes(array: np.ndarray) -> bytes:
    if array.dtype == np.object_:
        parts = []
        for item in array.ravel():
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def check_json_datatype(name: str, datatype: str) -> None:
    """Whether `datatype` can travel as JSON `data` (half floats cannot, as in Triton)."""
    if not datatypes.is_known(datatype):
        raise invalid(f"input '{name}': unknown datatype '{datatype}'")
    if datatype in ("FP16", "BF16"):
        raise invalid(f"sending {datatype} data via JSON is not supported. Please use the binary data format for input")


def from_json(name: str, datatype: str, shape: list[int], data: object) -> np.ndarray:
    """JSON `data` (flat or nested) to an array; element count must match the shape."""
    check_json_datatype(name, datatype)
    count = element_count(name, datatype, shape)
    _check_nesting(name, data, count, shape, datatype == "BYTES")
    try:
        if datatype == "BYTES":
            flat: list = []
            _flatten(name, data if isinstance(data, list) else [data], flat, count, 0)
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
    raise invalid(f"input '{name}': BYTES data in JSON must be strings, got {_short(value)}")


def _too_deep() -> ServerError:
    return invalid(f"JSON nesting depth exceeds maximum allowed limit ({MAX_JSON_DEPTH})")


def _check_nesting(name: str, data: object, count: int, shape: list[int], ragged: bool) -> None:
    """Along the first elements only (cheap): the nesting depth, and for dense data (numbers, which
    must be dense) the element count the nesting shows, so that a mismatch is refused unread."""
    depth, shown = 0, 1
    while isinstance(data, list):
        shown *= len(data)
        depth += 1
        if depth >= MAX_JSON_DEPTH:
            raise _too_deep()
        if not data:
            break
        data = data[0]
    if not ragged and depth and shown != count:
        raise invalid(f"input '{name}': unexpected number of elements {shown} for shape {shape}, expected {count}")


def _flatten(name: str, data: list, out: list, limit: int, depth: int) -> None:
    """The leaves of nested lists into `out`, in order; past `limit` leaves it stops with an error."""
    if depth >= MAX_JSON_DEPTH - 1:
        raise _too_deep()
    for item in data:
        if isinstance(item, list):
            _flatten(name, item, out, limit, depth + 1)
        else:
            out.append(item)
            if len(out) > limit:
                raise invalid(f"input '{name}': more elements in 'data' than the {limit} its shape holds")


def to_json(array: np.ndarray) -> list:
    if array.dtype == np.object_:
        return [b.decode("utf-8", errors="replace") if isinstance(b, bytes) else str(b) for b in array.ravel()]
    if array.dtype == np.float16:
        raise invalid("sending FP16 data via JSON is not supported. Please use the binary data format for output")
    return array.ravel().tolist()
