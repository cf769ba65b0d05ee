"""Large tensor data in a v2 JSON body, located and checked without being parsed.

A 64 MiB v2 infer body is almost all one input's `data`; parsing it makes millions of Python
objects (seconds on a busy machine), and a request the model refuses by the input's name,
datatype or shape never needs them. `decode` finds each input's `data` with msgspec (a
validating decoder that skips what it is not asked for, without making objects: 10-50 times
faster than orjson here), parses the rest of the document with the caller's parser, with each
large `data` replaced by a placeholder, and puts the data back as `Span`s: their bytes, parsed
only when asked (kserve/predecode.py parses those the model's checks will read).

Answers never change. A span is taken out only when it is certainly what the whole parse would
read: the rest of the document goes through the same parser (its checks, its values, its
duplicate-key rule), each placeholder must come back exactly as some `inputs[k]["data"]`, and
what the whole parse would refuse inside a span and msgspec's skipping lets through is ruled
out before: non-ASCII text (msgspec does not check UTF-8 in what it skips), exponents (orjson
refuses floats out of range) and nesting past the depth limit. Whenever any of that does not
hold, `decode` answers None and the caller parses the whole body, as before, so every error
message is the whole parse's.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

import msgspec
import numpy as np
import orjson

from triserve.protocols.transport.json_input import MAX_DEPTH, depth_exceeds

SPLICE_MIN = 1 << 16  # bytes: smaller data is parsed with the document
DATA_DEPTH = 3  # an input's data stands inside the document, its inputs array and the input's object
_EXPONENTS = [bytes((digit, e)) for digit in b"0123456789" for e in b"eE"]
Body = bytes | bytearray


class _Input(msgspec.Struct):
    data: msgspec.Raw = msgspec.Raw()


class _Document(msgspec.Struct):
    inputs: list[_Input] = []


_LOCATE = msgspec.json.Decoder(_Document)


class Span:
    """The bytes of one input's JSON `data` in a body (valid JSON, not parsed yet)."""

    __slots__ = ("body", "start", "end")

    def __init__(self, body: Body, start: int, end: int) -> None:
        self.body, self.start, self.end = body, start, end

    def load(self) -> Any:
        """The value, as the whole body's parse would have read it."""
        return orjson.loads(memoryview(self.body)[self.start : self.end])

    def __len__(self) -> int:
        return self.end - self.start


def _address(buffer: Any) -> int:
    return int(np.frombuffer(buffer, np.uint8).ctypes.data)


def locate(body: Body) -> list[tuple[int, int]] | None:
    """Where each input's `data` of at least SPLICE_MIN bytes stands in `body`, in order, or
    None when the body is not a v2 document msgspec reads (the whole parse then says why)."""
    try:
        document = _LOCATE.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    base, found = _address(body), []
    for item in document.inputs:
        size = len(item.data)
        if size < SPLICE_MIN:
            continue
        start = _address(item.data) - base
        if not 0 <= start <= len(body) - size:
            return None  # not a view of the body (msgspec copied it): nothing certain
        found.append((start, start + size))
    found.sort()
    if any(a[1] > b[0] for a, b in zip(found, found[1:])):
        return None
    return found


def certain(body: Body, start: int, end: int) -> bool:
    """Whether the whole parse would read body[start:end] (valid JSON to msgspec) without an
    error msgspec does not raise when it skips: past the depth limit, a float out of range."""
    if body.count(b"e", start, end) or body.count(b"E", start, end):
        if any(body.find(exponent, start, end) >= 0 for exponent in _EXPONENTS):
            return False
    brackets = body.count(b"[", start, end) + body.count(b"{", start, end)
    return brackets <= MAX_DEPTH - DATA_DEPTH or not depth_exceeds(
        memoryview(body)[start:end], MAX_DEPTH - DATA_DEPTH)


def decode(parse: Callable[[Body], dict[str, Any]], body: Body) -> dict[str, Any] | None:
    """`parse(body)`, with each large input `data` left unparsed as a Span, or None when that is
    not certain to read as the whole parse would (the caller parses the whole body)."""
    if len(body) < SPLICE_MIN or not body.isascii():
        return None
    found = locate(body)
    if not found or not all(certain(body, start, end) for start, end in found):
        return None
    nonce = secrets.token_hex(16)
    view, pieces, position = memoryview(body), [], 0
    for index, (start, end) in enumerate(found):
        pieces += [view[position:start], b'"triserve-span-%s-%d"' % (nonce.encode(), index)]
        position = end
    pieces.append(view[position:])
    try:
        document = parse(b"".join(pieces))
    except Exception:
        return None  # the whole parse says why
    inputs = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(inputs, list):
        return None
    prefix, seen = f"triserve-span-{nonce}-", set()
    for item in inputs:
        value = item.get("data") if isinstance(item, dict) else None
        if isinstance(value, str) and value.startswith(prefix):
            index = int(value[len(prefix):])
            if index in seen:
                return None
            seen.add(index)
            item["data"] = Span(body, *found[index])
    if len(seen) != len(found):
        return None  # a placeholder stood somewhere else: in a string, under another key, a key given twice
    return document


def resolve(document: dict[str, Any]) -> None:
    """Each Span still in the document (one a predecode step did not take) parsed in place."""
    inputs = document.get("inputs")
    for item in inputs if isinstance(inputs, list) else ():
        if isinstance(item, dict) and isinstance(item.get("data"), Span):
            item["data"] = item["data"].load()
