"""Large tensor values in a JSON body, located and checked without being parsed.

A 64 MiB infer body is almost all one tensor's values (a v2 input's `data`, TF Serving REST's
`instances` or `inputs`); parsing it makes millions of Python objects (seconds on a busy
machine), and a request the model refuses by the input's name, datatype or shape never needs
them. `decode` finds each large value with msgspec (a validating decoder that skips what it is
not asked for, without making objects: 10-50 times faster than orjson here), parses the rest of
the document with the caller's parser, with each large value replaced by a placeholder, and puts
the values back as `Span`s: their bytes, parsed only when asked (the predecode steps parse those
the model's checks will read). Where the values stand is the protocol's `Layout`.

Answers never change. A span is taken out only when it is certainly what the whole parse would
read: the rest of the document goes through the same parser (its checks, its values, its
duplicate-key rule), each placeholder must come back exactly where the layout says a value
stands, and what the whole parse would refuse inside a span and msgspec's skipping lets through
is ruled out before: non-ASCII text (msgspec does not check UTF-8 in what it skips), exponents
(orjson refuses floats out of range) and nesting past the depth limit. Whenever any of that does
not hold, `decode` answers None and the caller parses the whole body, as before, so every error
message is the whole parse's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import msgspec
import numpy as np
import orjson

from triserve.protocols.transport.json_input import MAX_DEPTH, depth_exceeds

SPLICE_MIN = 1 << 16  # bytes: smaller values are parsed with the document
_EXPONENTS = [bytes((digit, e)) for digit in b"0123456789" for e in b"eE"]
Body = bytes | bytearray


def _orjson_loads(text: Any) -> Any:
    return orjson.loads(text)


@dataclass(frozen=True)
class Layout:
    """Where a protocol's tensor values stand in its JSON documents, and how it parses one."""

    decoder: msgspec.json.Decoder  # reads the fields that hold them, as msgspec.Raw
    raws: Callable[[Any], list[msgspec.Raw]]  # those fields, from what the decoder read
    places: Callable[[Any], Iterator[tuple[Any, Any]]]  # (container, key) of each, in the parsed document
    depth: int  # how many containers stand around each value
    loads: Callable[[Any], Any] = _orjson_loads  # one value, as the protocol's whole parse reads it


class Span:
    """The bytes of one tensor value in a JSON body (valid JSON, not parsed yet), and how the
    protocol's whole parse reads it."""

    __slots__ = ("body", "start", "end", "loads")

    def __init__(self, body: Body, start: int, end: int, loads: Callable[[Any], Any] = _orjson_loads) -> None:
        self.body, self.start, self.end, self.loads = body, start, end, loads

    def load(self) -> Any:
        """The value, as the whole body's parse would have read it."""
        return self.loads(memoryview(self.body)[self.start : self.end])

    def outline(self) -> Any:
        """The value read only along first elements: each array as its length and its first
        element (an Outline), objects and scalars as they are. What a shape check reads."""
        return _outline(memoryview(self.body)[self.start : self.end], self.loads)

    def __len__(self) -> int:
        return self.end - self.start


class Outline(list):
    """A JSON array read only as far as its length and its first element."""

    def __init__(self, length: int, first: Any) -> None:
        super().__init__()
        self.length, self.first = length, first

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: Any) -> Any:
        if index != 0 or not self.length:
            raise IndexError("an outline holds only its first element")
        return self.first

    def __iter__(self) -> Any:  # a loop over it would see no elements: refuse rather than mislead
        raise TypeError("an outline holds only its length and first element")


_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _outline(raw: Any, loads: Callable[[Any], Any]) -> Any:
    text = bytes(memoryview(raw)[:64]).lstrip()
    if text.startswith(b"["):
        items = _ARRAY.decode(raw)
        return Outline(len(items), _outline(items[0], loads) if items else None)
    if text.startswith(b"{"):
        return {key: _outline(value, loads) for key, value in _OBJECT.decode(raw).items()}
    return loads(memoryview(raw))


def _address(buffer: Any) -> int:
    return int(np.frombuffer(buffer, np.uint8).ctypes.data)


def locate(body: Body, layout: Layout) -> list[tuple[int, int]] | None:
    """Where each value of at least SPLICE_MIN bytes stands in `body`, in order, or None when
    the body is not a document msgspec reads (the whole parse then says why)."""
    try:
        document = layout.decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    base, found = _address(body), []
    for raw in layout.raws(document):
        size = len(raw)
        if size < SPLICE_MIN:
            continue
        start = _address(raw) - base
        if not 0 <= start <= len(body) - size:
            return None  # not a view of the body (msgspec copied it): nothing certain
        found.append((start, start + size))
    found.sort()
    if any(a[1] > b[0] for a, b in zip(found, found[1:])):
        return None
    return found


def certain(body: Body, start: int, end: int, depth: int) -> bool:
    """Whether the whole parse would read body[start:end] (valid JSON to msgspec) without an
    error msgspec does not raise when it skips: past the depth limit, a float out of range."""
    if body.count(b"e", start, end) or body.count(b"E", start, end):
        if any(body.find(exponent, start, end) >= 0 for exponent in _EXPONENTS):
            return False
    brackets = body.count(b"[", start, end) + body.count(b"{", start, end)
    return brackets <= MAX_DEPTH - depth or not depth_exceeds(memoryview(body)[start:end], MAX_DEPTH - depth)


def decode(parse: Callable[[Body], dict[str, Any]], body: Body, layout: Layout) -> dict[str, Any] | None:
    """`parse(body)`, with each large value where `layout` says left unparsed as a Span, or None
    when that is not certain to read as the whole parse would (the caller parses the whole body)."""
    if len(body) < SPLICE_MIN or not body.isascii():
        return None
    found = locate(body, layout)
    if not found or not all(certain(body, start, end, layout.depth) for start, end in found):
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
    if not isinstance(document, dict):
        return None
    prefix, seen = f"triserve-span-{nonce}-", set()
    for container, key in layout.places(document):
        value = container[key]
        if isinstance(value, str) and value.startswith(prefix):
            index = int(value[len(prefix):])
            if index in seen:
                return None
            seen.add(index)
            container[key] = Span(body, *found[index], layout.loads)
    if len(seen) != len(found):
        return None  # a placeholder stood somewhere else: in a string, under another key, a key given twice
    return document


def resolve(document: dict[str, Any], layout: Layout) -> None:
    """Each Span still in the document (one a predecode step did not take) parsed in place."""
    for container, key in layout.places(document):
        if isinstance(container[key], Span):
            container[key] = container[key].load()
