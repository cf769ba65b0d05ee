"""JSON from clients: the nesting depth is judged on the bytes, before any parser recurses."""

from __future__ import annotations

import json
import random

import pytest

from triserve.errors import ServerError
from triserve.protocols.transport import json_input
from triserve.protocols.transport.json_input import MAX_DEPTH, depth_exceeds, loads, loads_object, parse_object

DEPTH_ERROR = "JSON nesting depth exceeds maximum allowed limit (100)"


def nested(depth: int, inner: str = "1") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


def test_a_hundred_levels_pass_and_one_more_is_refused_with_tritons_words():
    assert loads(nested(MAX_DEPTH)) is not None
    with pytest.raises(ServerError, match=r"^JSON nesting depth exceeds maximum allowed limit \(100\)$"):
        loads(nested(MAX_DEPTH + 1))
    with pytest.raises(ServerError, match=DEPTH_ERROR.replace("(", r"\(").replace(")", r"\)")):
        loads(b'{"a":' * 101 + b"1" + b"}" * 101)


def test_150000_levels_are_refused_without_recursing():
    assert depth_exceeds(nested(150_000))
    assert depth_exceeds(b"[" * 150_000)  # unclosed, too


def test_brackets_inside_strings_do_not_count():
    assert not depth_exceeds(json.dumps(["[" * 500, "{" * 500]).encode())
    assert not depth_exceeds(json.dumps({"[" * 500: 'he said "[[[[" \\ [[['}).encode())
    after_escapes = b'["\\\\\\"", ' + nested(100) + b"]"  # a string of a backslash and a quote, then real nesting
    assert json.loads(after_escapes)[0] == '\\"'
    assert depth_exceeds(after_escapes)


def test_an_escape_split_between_two_scanned_slices_keeps_its_string_open():
    # the backslash is the last byte of the first slice; the quote it escapes the first of the
    # next, and the brackets after it are still inside the string
    head = b'["' + b"a" * (json_input._SLICE - 3) + b"\\"
    assert len(head) == json_input._SLICE
    document = head + b'"' + b"[" * 200 + b'"]'
    json.loads(document)
    assert not depth_exceeds(document)
    assert depth_exceeds(head + b'\\"' + b"[" * 200 + b"]" * 200 + b"]")  # an escaped backslash, then a real quote


def test_the_scan_agrees_with_the_parsed_depth_of_random_documents():
    rng = random.Random(7)

    def document(level: int) -> object:
        roll = rng.random()
        if level > 8 or roll < 0.3:
            return rng.choice([1, 2.5, None, True, "x[", '"[{', "\\", 'a\\"]', "\\\\\"", "\n]"])
        if roll < 0.65:
            return [document(level + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["k", "[", '\\"{', "\\"]): document(level + 1) for _ in range(rng.randint(0, 3))}

    def depth(value: object) -> int:
        if isinstance(value, list):
            return 1 + max(map(depth, value), default=0)
        if isinstance(value, dict):
            return 1 + max(map(depth, value.values()), default=0)
        return 0

    for _ in range(2000):
        value = document(0)
        text = json.dumps(value).encode()
        for limit in (0, 1, 2, 4, 6):
            assert depth_exceeds(text, limit) == (depth(value) > limit), (text, limit)


def test_parse_errors_and_non_objects_are_400():
    with pytest.raises(ServerError, match="^failed to parse the load request: "):
        loads(b"{", "the load request")
    with pytest.raises(ServerError, match="^the request JSON must be an object$"):
        loads_object(b"[1]")


@pytest.mark.anyio
async def test_large_documents_parse_off_the_loop_with_the_same_checks():
    large = json.dumps({"data": list(range(100_000))}).encode()
    assert (await parse_object(large))["data"][-1] == 99_999
    with pytest.raises(ServerError, match=r"nesting depth"):
        await parse_object(b'{"a":' + nested(100_000) + b"}")
