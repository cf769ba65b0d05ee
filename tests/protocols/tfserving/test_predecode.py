"""tfserving/predecode.json_inputs in the worker's decode (json_input.decode): large `instances`
or `inputs` come as spans (SPAN_LAYOUT) read as the whole parse reads them; those whose shapes the
model's checks refuse are never parsed (counted by a spy on the JSON parser); shapes they accept
are read to the same arrays as before."""

from __future__ import annotations

import functools

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triserve.errors import ServerError
from triserve.protocols.tfserving import json_codec as tfjson
from triserve.protocols.tfserving import predecode
from triserve.protocols.transport import json_input, spans
from triserve.protocols.transport.processes import Expected, Predecoded

FP32 = np.dtype(np.float32)
SCORES = ({"INPUT": FP32}, frozenset({"INPUT"}), Expected({"INPUT": ("FP32", (5,))}, 4, split=True))  # FP32 [-1, 5]
ROWS = 20_000


def decode(text: bytes, model=SCORES) -> dict:
    return json_input.decode(tfjson.parse, text, functools.partial(predecode.json_inputs, model=model), "x")


def test_instances_of_the_wrong_row_shape_are_refused_without_parsing_them(parsed):
    text = orjson.dumps({"signature_name": "", "instances": [[0.5] * 6] * ROWS})
    document = decode(text)
    value = document["instances"]
    assert value.shapes == {"INPUT": [ROWS, 6]}
    assert isinstance(value.arrays, Predecoded)  # skipped: the server's check_inputs names the shape
    assert document["signature_name"] == ""
    assert max(parsed) < spans.SPLICE_MIN  # only the document without its instances, and one row


def test_named_instances_are_outlined_by_their_first_row(parsed):
    text = orjson.dumps({"instances": [{"INPUT": [[0.5] * 5] * 2}] * ROWS})
    assert decode(text)["instances"].shapes == {"INPUT": [ROWS, 2, 5]}
    assert max(parsed) < spans.SPLICE_MIN


def test_columnar_inputs_of_the_wrong_shape_are_refused_without_parsing_them(parsed):
    text = orjson.dumps({"inputs": {"INPUT": [[0.5] * 7] * ROWS}})
    assert decode(text)["inputs"].shapes == {"INPUT": [ROWS, 7]}
    assert max(parsed) < spans.SPLICE_MIN


def test_instances_the_model_accepts_are_parsed_and_read_as_before(parsed):
    rows = (np.arange(ROWS * 5) % 7 / 4).astype(np.float32).reshape(ROWS, 5)
    text = orjson.dumps({"instances": rows.tolist()})
    value = decode(text)["instances"]
    assert value.shapes == {"INPUT": [ROWS, 5]}
    np.testing.assert_array_equal(value.read(*SCORES[:2])["INPUT"], rows)
    assert max(parsed) >= len(text) - 20  # the instances themselves were parsed


def test_a_servable_that_did_not_resolve_leaves_its_values_unparsed(parsed):
    text = orjson.dumps({"instances": [[0.5] * 5] * ROWS})
    assert isinstance(decode(text, model=None)["instances"], Predecoded)
    assert max(parsed) < spans.SPLICE_MIN


# -- SPAN_LAYOUT: the document's `instances` or `inputs` as spans -----------------------------
BIG = spans.SPLICE_MIN


def resolved(document: dict) -> dict:
    spans.resolve(document, predecode.SPAN_LAYOUT)
    return document


def test_instances_come_as_a_span_outlined_by_length_and_first_element():
    text = orjson.dumps({"signature_name": "s", "instances": [[[1, 2, 3]] * 2] * BIG})
    document = spans.decode(tfjson.parse, text, predecode.SPAN_LAYOUT)
    assert document is not None and document["signature_name"] == "s"
    outline = document["instances"].outline()
    assert isinstance(outline, list) and len(outline) == BIG
    assert len(outline[0]) == 2 and len(outline[0][0]) == 3 and outline[0][0][0] == 1
    with pytest.raises(IndexError):
        outline[1]
    with pytest.raises(TypeError):
        list(outline)  # never read as an empty array
    assert resolved(document) == orjson.loads(text)


def test_values_elsewhere_than_the_top_level_are_left_to_the_whole_parse():
    inner = orjson.dumps({"parameters": {"instances": ["a"] * BIG}})
    assert spans.decode(tfjson.parse, inner, predecode.SPAN_LAYOUT) is None  # nothing large where the layout looks
    twice = b'{"inputs":' + orjson.dumps(["a"] * BIG) + b',"inputs":[1]}'
    document = spans.decode(tfjson.parse, twice, predecode.SPAN_LAYOUT)
    assert document is None or resolved(document) == tfjson.parse(twice)


# Differential: for any short value text, decode either declines or reads exactly as tfjson.parse
# does (NaN and Infinity included), with SPLICE_MIN lowered so that short texts are taken out.
TOKENS = st.sampled_from(['"a"', '"\\u00e9"', '"\\ud800"', '"\\x"', "1", "-0", "01", "1.", ".5", "1e5", "1E999",
                          "NaN", "Infinity", "-Infinity", "true", "nul", "null", "[", "]", "{", "}", ",", ":", " ",
                          '"', "é", "-", "+1", '"\x01"', '"instances"', '"inputs"', '{"b64":"YQ=="}',
                          "18446744073709551616"])


@settings(max_examples=400, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(TOKENS, min_size=1, max_size=12))
def test_decode_never_reads_a_value_differently_from_the_whole_parse(monkeypatch, tokens):
    monkeypatch.setattr(spans, "SPLICE_MIN", 1)
    text = b'{"signature_name":"","instances":' + "".join(tokens).encode() + b"}"
    document = spans.decode(tfjson.parse, text, predecode.SPAN_LAYOUT)
    try:
        expected = tfjson.parse(text)
    except ServerError:
        assert document is None
        return
    if document is not None:
        assert repr(resolved(document)) == repr(expected)  # repr: NaN equals itself
