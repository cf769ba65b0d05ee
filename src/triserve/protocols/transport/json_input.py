"""JSON from clients, for every JSON API: the nesting depth is checked on the bytes before any
parser sees them (as Triton, at most 100 levels), and large documents are parsed off the loop:
over processes.LARGE bytes in a worker process (orjson holds the GIL while it parses, so a
thread would not free the loop), which also reads the tensor contents (`predecode`) and sends
back only what is cheap to receive.

The depth check is a bounded scan with numpy, so a document nested 150,000 deep is refused in
milliseconds and no parser, not even the standard library's recursive one, ever recurses deeper
than 100 levels.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import orjson

from triserve.errors import ServerError, invalid
from triserve.protocols.transport import offload, processes

# A document decoded in a worker process comes back as Python objects, which take the server as
# long to unpickle as to parse: beside its predecoded tensor contents it may hold this many values.
MAX_PLAIN_VALUES = 1 << 18

MAX_DEPTH = 100  # Triton's HTTP_MAX_JSON_NESTING_DEPTH
_SLICE = 4 << 20  # bytes scanned at a time: bounds scratch memory and how long the GIL is held
_STEP = np.zeros(256, np.int8)  # what each byte does to the nesting depth
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')


def too_deep() -> ServerError:
    return invalid(f"JSON nesting depth exceeds maximum allowed limit ({MAX_DEPTH})")


def depth_exceeds(data: bytes | memoryview, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects more than `limit` deep (brackets inside
    strings do not count). Exact for valid JSON; for invalid JSON either answer is harmless,
    the parser refuses it anyway."""
    if isinstance(data, bytes) and data.count(b"[") + data.count(b"{") <= limit:
        return False  # it cannot nest deeper than it has brackets (a binary request's header, mostly)
    view = memoryview(data).cast("B")
    depth = 0  # nesting at the start of the slice
    in_string = 0  # 1 when the slice starts inside a string
    carry = b""  # a backslash that escapes the first byte of the next slice
    for start in range(0, len(view), _SLICE):
        text = carry + bytes(view[start : start + _SLICE])
        carry = b""
        if b"\\" in text:
            if start + _SLICE < len(view):
                run = len(text) - len(text.rstrip(b"\\"))
                if run % 2:  # an escape sequence split between slices: finish it in the next
                    text, carry = text[:-1], b"\\"
            # Escapes go first (escaped backslashes, then escaped quotes), so that every quote
            # left opens or closes a string; then everything but quotes and brackets.
            text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
        text = text.translate(None, _NOT_STRUCTURE)
        if not text:
            continue
        codes = np.frombuffer(text, np.uint8)
        steps = _STEP.take(codes)
        if b'"' in text:
            # inside a string: after an odd number of quotes (uint8 sums wrap at 256, keeping parity)
            inside = (np.cumsum(codes == ord('"'), dtype=np.uint8) & 1) ^ in_string
            steps *= inside ^ 1
            in_string = int(inside[-1])
        elif in_string:
            continue  # all of it inside one string
        levels = np.cumsum(steps, dtype=np.int32)
        if depth + int(levels.max()) > limit:
            return True
        depth += int(levels[-1])
    return False


def check_depth(data: bytes | memoryview) -> None:
    if depth_exceeds(data):
        raise too_deep()


def loads(data: bytes | memoryview, what: str = "the request JSON") -> Any:
    """A JSON document no deeper than MAX_DEPTH, or a 400 saying why not."""
    check_depth(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise invalid(f"failed to parse {what}: {e}") from None


def loads_object(data: bytes | memoryview, what: str = "the request JSON") -> dict[str, Any]:
    value = loads(data, what)
    if not isinstance(value, dict):
        raise invalid(f"{what} must be an object")
    return value


async def parse_object(
    data: bytes | memoryview, what: str = "the request JSON", predecode: Callable[[dict[str, Any]], Any] | None = None
) -> dict[str, Any]:
    """loads_object: on a worker thread when the document is large, in a worker process when it
    is larger than processes.LARGE. There `predecode(document)` (a picklable module-level
    function, or a functools.partial of one) replaces tensor contents in the document with
    processes.Predecoded (or drops them); what is left must be small (MAX_PLAIN_VALUES)."""
    return await parse_with(functools.partial(loads_object, what=what), data, predecode, what)


async def parse_with(
    parse: Callable[[bytes], dict[str, Any]],
    data: bytes | memoryview,
    predecode: Callable[[dict[str, Any]], Any] | None = None,
    what: str = "the request JSON",
) -> dict[str, Any]:
    """parse_object with another parser (picklable too)."""
    if len(data) > processes.LARGE:
        # a bytearray (bodies.read_body's buffer) pickles as it is; a memoryview is copied once
        body = data if isinstance(data, (bytes, bytearray)) else bytes(data)
        return await processes.run(decode, parse, body, predecode, what)
    return await offload.run(len(data), parse, data)


def decode(
    parse: Callable[[bytes], dict[str, Any]], data: bytes, predecode: Callable[[dict[str, Any]], Any] | None, what: str
) -> dict[str, Any]:
    """In a worker process: `parse`, then `predecode`, then the check that what goes back is small.
    A predecode step with a `span_layout` (spans.Layout) gets large tensor values unparsed, as
    spans.Span (it parses those it reads; any it leaves are parsed here), when spans.decode is
    certain that changes nothing."""
    from triserve.protocols.transport import spans  # it imports this module

    layout = getattr(getattr(predecode, "func", predecode), "span_layout", None)
    document = spans.decode(parse, data, layout) if layout is not None else None
    if document is None:
        document = parse(data)
    if predecode is not None:
        predecode(document)
    if layout is not None:
        spans.resolve(document, layout)  # what predecode left unparsed
    if plain_values(document, MAX_PLAIN_VALUES) > MAX_PLAIN_VALUES:
        raise invalid(
            f"{what} holds more than {MAX_PLAIN_VALUES} values besides tensor data (where they are not read);"
            " send large tensors as tensor data"
        )
    return document


def plain_values(document: Any, limit: int) -> int:
    """How many JSON values `document` holds (a Predecoded counts as one), counting stopped past `limit`."""
    count, stack = 0, [document]
    while stack and count <= limit:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            if count + len(value) > limit:
                return limit + 1
            stack.extend(value)
    return count
