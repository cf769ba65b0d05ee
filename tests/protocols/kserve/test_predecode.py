"""kserve/predecode.json_inputs in the worker's decode (json_input.decode): large `data` that the
model's checks refuse is never parsed (counted by a spy on the JSON parser); data they accept is
read as before."""

from __future__ import annotations

import functools

import numpy as np
import orjson

from triserve.protocols.kserve import predecode
from triserve.protocols.transport import json_input, spans
from triserve.protocols.transport.processes import Expected, Predecoded

PARSE = functools.partial(json_input.loads_object, what="the request JSON")
SCORES = Expected({"INPUT": ("FP32", (5,))}, 4)  # FP32 [-1, 5], max batch size 4
COUNT = 100_000


def decode(document: bytes) -> dict:
    return json_input.decode(PARSE, document, functools.partial(predecode.json_inputs, expected=SCORES), "x")


def test_large_bytes_to_an_fp32_input_are_refused_without_parsing_them(parsed):
    text = orjson.dumps({"inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": [COUNT], "data": ["a"] * COUNT}]})
    document = decode(text)
    (item,) = document["inputs"]
    assert isinstance(item["data"], Predecoded) and item["shape"] == [COUNT]
    assert max(parsed) < spans.SPLICE_MIN  # only the document without its data was parsed


def test_a_batch_over_the_limit_is_refused_without_parsing_its_numbers(parsed):
    text = orjson.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [COUNT // 5, 5],
                                     "data": [0.5] * COUNT}]})
    decode(text)
    assert max(parsed) < spans.SPLICE_MIN


def test_large_data_the_model_accepts_is_parsed_and_read_as_before(parsed):
    wide = Expected({"INPUT": ("FP32", (-1,))}, 0)  # FP32 [-1], no batching: COUNT elements fit
    values = (np.arange(COUNT) % 7 / 4).astype(np.float32)
    text = orjson.dumps({"id": "r", "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [COUNT],
                                                "data": values.tolist()}]})
    document = json_input.decode(PARSE, text, functools.partial(predecode.json_inputs, expected=wide), "x")
    assert document["id"] == "r"
    np.testing.assert_array_equal(document["inputs"][0]["data"].value(), values)
    assert sorted(parsed)[-1] > spans.SPLICE_MIN  # the data itself was parsed, as its span
    assert sum(size > spans.SPLICE_MIN for size in parsed) == 1  # once, not with the document too
