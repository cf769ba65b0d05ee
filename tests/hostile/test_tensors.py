"""Hostile tensors over HTTP (KServe v2 JSON and binary, TF Serving REST), in-process through the
real ASGI apps over a real data plane with the tiny models: 60 MiB of BYTES to an FP32 model,
shapes no array can hold, duplicate outputs and BYTES data nested too deep. Each is a 400 in
the protocol's own format, decided on the tensors' names, datatypes and shapes before their
contents are read, while other clients keep being answered."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from typing import AsyncIterator, NamedTuple

import httpx
import numpy as np
import orjson
import pytest

from tests.hostile.models import echo_repository
from tests.inprocess import triton_dataplane
from triserve.protocols.kserve.rest import V2HTTP
from triserve.protocols.tfserving.rest import TFServingREST

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
GOOD_REQUESTS = 20
WAIT = 60  # seconds: only bounds a test whose server hangs; nothing here is timed
A = list(range(16))
B = [3] * 16
INT64_MAX = 2**63 - 1


class Clients(NamedTuple):
    v2: httpx.AsyncClient
    tfserving: httpx.AsyncClient


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def clients(tmp_path_factory) -> AsyncIterator[Clients]:
    async with triton_dataplane(echo_repository(tmp_path_factory.mktemp("models"))) as dataplane:
        v2 = httpx.AsyncClient(transport=httpx.ASGITransport(app=V2HTTP(dataplane).app()), base_url="http://v2", timeout=WAIT)
        tf = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=TFServingREST(dataplane).app()), base_url="http://tf", timeout=WAIT
        )
        async with v2, tf:
            yield Clients(v2, tf)


def simple_body(outputs: list[str] | None = None) -> dict:
    body: dict = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": A},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": B},
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


async def good_inference(clients: Clients) -> None:
    """One good inference and one health check, both answered correctly."""
    response = await clients.v2.post("/v2/models/simple/infer", json=simple_body())
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [a + b for a, b in zip(A, B)]
    assert (await clients.v2.get("/v2/health/live")).status_code == 200


def assert_error(response: httpx.Response, words: str) -> None:
    """A 400 in Triton's (and TF Serving's) format: a JSON object with only `error`."""
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"], response.text
    assert words in response.json()["error"], response.text


# -- 60 MiB of BYTES to an FP32 model ----------------------------------------------------------
STRING = "x" * 60  # 64 bytes each in a JSON list: about a million strings in 60 MiB
STRINGS = (60 * MiB) // (len(STRING) + 4)


def _hostile(kind: str) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers): 60 MiB of BYTES for `scores` (FP32 INPUT [-1, 5])."""
    if kind == "v2 binary":
        count = 15 * MiB  # empty strings: 4 length bytes each
        header = orjson.dumps(
            {"inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": [1, count], "parameters": {"binary_data_size": 4 * count}}]}
        )
        return "/v2/models/scores/infer", header + bytes(4 * count), {"Inference-Header-Content-Length": str(len(header))}
    if kind == "v2 JSON":
        body = {"inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": [1, STRINGS], "data": [STRING] * STRINGS}]}
        return "/v2/models/scores/infer", orjson.dumps(body), {"Content-Type": "application/json"}
    rows = STRINGS // 5  # TF Serving JSON: the datatype is the model's, the strings are refused
    return "/v1/models/scores:predict", orjson.dumps({"instances": [[STRING] * 5] * rows}), {}


HOSTILE_ERRORS = {
    "v2 binary": "inference input 'INPUT' data-type is 'BYTES', but model 'scores' expects 'FP32'",
    "v2 JSON": "inference input 'INPUT' data-type is 'BYTES', but model 'scores' expects 'FP32'",
    "TF Serving JSON": "input 'INPUT': JSON values of type String are not of expected type: float32",
}


@pytest.mark.parametrize("kind", list(HOSTILE_ERRORS))
async def test_sixty_mebibytes_of_bytes_to_an_fp32_model_are_refused_while_others_are_answered(clients, kind):
    path, body, headers = _hostile(kind)
    client = clients.tfserving if path.startswith("/v1/") else clients.v2
    started = time.perf_counter()
    hostile = asyncio.ensure_future(client.post(path, content=body, headers=headers))
    answered = 0
    for _ in range(GOOD_REQUESTS):
        await good_inference(clients)
        answered += not hostile.done()
    response = await asyncio.wait_for(hostile, WAIT)
    print(f"\n{len(body) / MiB:.0f} MiB of BYTES ({kind}) refused in {time.perf_counter() - started:.2f} s;"
          f" {answered} of {GOOD_REQUESTS} good requests answered meanwhile")
    assert_error(response, HOSTILE_ERRORS[kind])


# -- shapes no array can hold -----------------------------------------------------------------
OVERFLOWING = {
    "[0,9223372036854775808]": (
        [0, 2**63],
        f"invalid shape for input 'INPUT': shape [0,9223372036854775808] causes total element count to exceed"
        f" maximum size of {INT64_MAX}",
    ),
    "[0,2^62,2^62]": (
        [0, 2**62, 2**62],
        f"invalid shape for input 'INPUT': shape [0,{2**62},{2**62}] causes total element count to exceed maximum"
        f" size of {INT64_MAX}",
    ),
    "[2,2^61]": (
        [2, 2**61],
        f"byte size overflow for input 'INPUT': element count ({2**62}) * data type size (4) exceeds maximum"
        f" allowed size ({INT64_MAX})",
    ),
}


@pytest.mark.parametrize("layout", ["JSON", "binary"])
@pytest.mark.parametrize("shape, message", OVERFLOWING.values(), ids=list(OVERFLOWING))
async def test_shapes_no_array_can_hold_are_400_with_tritons_words(clients, layout, shape, message):
    tensor = {"name": "INPUT", "datatype": "FP32", "shape": shape}
    if layout == "JSON":
        response = await clients.v2.post("/v2/models/scores/infer", json={"inputs": [{**tensor, "data": [1.0]}]})
    else:
        header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 4}}]})
        response = await clients.v2.post(
            "/v2/models/scores/infer", content=header + bytes(4), headers={"Inference-Header-Content-Length": str(len(header))}
        )
    assert_error(response, message)
    await good_inference(clients)


# -- requests Triton refuses ------------------------------------------------------------------
async def test_duplicate_output_names_are_400_as_in_triton(clients):
    response = await clients.v2.post("/v2/models/simple/infer", json=simple_body(["OUTPUT0", "OUTPUT1", "OUTPUT0"]))
    assert_error(response, "output 'OUTPUT0' already exists in request")
    await good_inference(clients)


def _nested(depth: int, value: object) -> object:
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth, datatype, model", [(120, "BYTES", "echo"), (120, "FP32", "scores")])
async def test_json_data_nested_deeper_than_100_is_400_as_in_triton(clients, depth, datatype, model):
    name, value, shape = ("TEXT", "hello", [1, 1]) if datatype == "BYTES" else ("INPUT", 1.0, [1, 5])
    body = {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": _nested(depth, value)}]}
    response = await clients.v2.post(f"/v2/models/{model}/infer", content=json.dumps(body))
    assert_error(response, "JSON nesting depth exceeds maximum allowed limit (100)")
    await good_inference(clients)


async def test_bytes_json_data_nested_50_deep_is_read(clients):
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": _nested(50, "hello")}]}
    response = await clients.v2.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 1]


async def test_more_bytes_elements_than_the_shape_holds_are_refused_without_reading_them(clients):
    count = 1_000_000  # the shape says 1: the first length prefix past it ends the reading
    blob = struct.pack("<I", 0) * count
    header = orjson.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": len(blob)}}]})
    response = await clients.v2.post(
        "/v2/models/echo/infer", content=header + blob, headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert_error(response, "input 'TEXT': more BYTES elements than the 1 that shape [1, 1] needs")


async def test_tfserving_rows_whose_shape_the_model_does_not_take_are_refused_before_they_are_read(clients):
    rows = [[1.0] * 4] * 100_000  # scores takes [-1, 5]
    response = await clients.tfserving.post("/v1/models/scores:predict", json={"instances": rows})
    assert_error(response, "unexpected shape for input 'INPUT' for model 'scores'. Expected [-1,5], got [100000,4]")
    np.testing.assert_array_equal(
        (await clients.tfserving.post("/v1/models/scores:predict", json={"instances": [[1.0] * 5]})).json()["predictions"],
        [[1.0] * 5],
    )
