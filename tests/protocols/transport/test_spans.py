"""spans.decode: large input `data` left unparsed only when the answer cannot change; anything
uncertain (non-ASCII, exponents, too deep, invalid JSON anywhere, key-like text in strings,
duplicate keys) falls back to the whole parse (None)."""

from __future__ import annotations

import functools

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triserve.errors import ServerError
from triserve.protocols.kserve.predecode import SPAN_LAYOUT as LAYOUT
from triserve.protocols.transport import json_input, spans
from triserve.protocols.transport.spans import Span

PARSE = functools.partial(json_input.loads_object, what="the request JSON")
BIG = spans.SPLICE_MIN  # bytes


def body(data: bytes, before: bytes = b'"name":"INPUT","datatype":"BYTES","shape":[1]', after: bytes = b"") -> bytes:
    return b'{"inputs":[{' + before + b',"data":' + data + b"}]" + after + b"}"


def strings(count: int) -> bytes:
    return orjson.dumps(["a"] * count)


def resolved(document: dict) -> dict:
    spans.resolve(document, LAYOUT)
    return document


def test_large_data_comes_as_a_span_and_the_rest_as_the_parser_reads_it():
    data = strings(BIG)
    text = body(data, after=b',"outputs":[{"name":"OUT","parameters":{"data":[1,2]}}],"id":"x"')
    document = spans.decode(PARSE, text, LAYOUT)
    assert document is not None
    span = document["inputs"][0]["data"]
    assert isinstance(span, Span) and len(span) == len(data)
    assert resolved(document) == orjson.loads(text)


def test_several_inputs_each_large_data_is_its_own_span_and_small_data_is_parsed():
    text = (b'{"inputs":[{"name":"A","data":' + strings(BIG) + b'},{"name":"B","data":[1,2,3]},'
            b'{"name":"C","data":' + orjson.dumps([0.5] * BIG) + b'}]}')
    document = spans.decode(PARSE, text, LAYOUT)
    assert document is not None
    kinds = [type(item["data"]) for item in document["inputs"]]
    assert kinds == [Span, list, Span]
    assert resolved(document) == orjson.loads(text)


@pytest.mark.parametrize("text", [
    body(b'["\xc3\xa9"' + b',"a"' * BIG + b"]"),  # non-ASCII: msgspec does not check UTF-8 when it skips
    body(b'["\xff"' + b',"a"' * BIG + b"]"),  # invalid UTF-8: the whole parse refuses it
    body(b"[1e999" + b",1" * BIG + b"]"),  # a float out of range: orjson refuses it, skipping would not
    body(b"[" * 97 + strings(BIG) + b"]" * 97),  # too deep for the limit (101 levels)
    body(strings(BIG), after=b",}"),  # invalid JSON after the data
    body(strings(BIG))[:-1],  # truncated
    body(strings(BIG), before=b'"name":"INPUT","data":[1]'),  # a key given twice: the parser keeps the last
    body(strings(10)),  # small: nothing to gain
    b'{"inputs":{"data":' + strings(BIG) + b"}}",  # inputs not a list
    b'{"x":"{\\"inputs\\":[{\\"data\\":' + b'[1,2]' * BIG + b'}]}"}',  # key-like text inside a string
])
def test_what_is_not_certain_is_left_to_the_whole_parse(text):
    document = spans.decode(PARSE, text, LAYOUT)
    if document is None:
        return
    # only a document the whole parse reads the same way may come back
    assert resolved(document) == orjson.loads(text)


def test_the_uncertain_cases_are_refused_by_the_fast_path():
    for text in [body(b'["\xc3\xa9"' + b',"a"' * BIG + b"]"), body(b"[1e999" + b",1" * BIG + b"]"),
                 body(strings(BIG), after=b",}"), body(b"[" * 97 + strings(BIG) + b"]" * 97)]:
        assert spans.decode(PARSE, text, LAYOUT) is None


def test_a_duplicate_data_key_reads_as_the_parser_keeps_it():
    text = body(strings(BIG), before=b'"name":"INPUT","data":' + orjson.dumps([1] * BIG))
    document = spans.decode(PARSE, text, LAYOUT)
    if document is not None:
        assert resolved(document) == orjson.loads(text)


def test_data_just_within_the_depth_limit_is_taken_out():
    text = body(b"[" * 96 + strings(BIG) + b"]" * 96)  # 100 levels
    document = spans.decode(PARSE, text, LAYOUT)
    assert document is not None and resolved(document) == orjson.loads(text)


def test_a_document_too_deep_elsewhere_answers_what_the_whole_parse_answers():
    text = body(strings(BIG), after=b',"p":' + b"[" * 120 + b"]" * 120)
    assert spans.decode(PARSE, text, LAYOUT) is None
    with pytest.raises(ServerError, match="nesting depth"):
        PARSE(text)


# Differential: for any short data text, decode either declines or reads exactly as orjson does
# (with SPLICE_MIN lowered so that short texts are taken out).
TOKENS = st.sampled_from(['"a"', '"\\u00e9"', '"\\ud800"', '"\\x"', "1", "-0", "01", "1.", ".5", "1e5", "1E999",
                          "2e-999", "true", "nul", "null", "[", "]", "{", "}", ",", ":", " ", "\t", "\f", '"', "é",
                          "NaN", "-", "+1", '"\x01"', '"data"', '"inputs"'])


@settings(max_examples=400, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(TOKENS, min_size=1, max_size=12))
def test_decode_never_reads_data_differently_from_the_whole_parse(monkeypatch, tokens):
    monkeypatch.setattr(spans, "SPLICE_MIN", 1)
    text = body("".join(tokens).encode())
    document = spans.decode(PARSE, text, LAYOUT)
    try:
        expected = PARSE(text)
    except ServerError:
        assert document is None
        return
    if document is not None:
        assert resolved(document) == expected
