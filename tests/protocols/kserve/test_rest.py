"""The KServe v2 HTTP front end (V2HTTP) in-process: its Starlette app over httpx's ASGI
transport, on a real data plane with the tiny models; errors are Triton's status codes with
`{"error": ...}` bodies."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import zlib
from pathlib import Path
from typing import AsyncIterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.inprocess import doubler_onnx, repeat_repository, tiny_repository, triton_dataplane
from triserve import __version__
from triserve.core.dataplane import DataPlane
from triserve.protocols.kserve import trace
from triserve.protocols.kserve.common import EXTENSIONS
from triserve.protocols.kserve.rest import V2HTTP

pytestmark = pytest.mark.anyio

A = np.arange(16, dtype=np.int32)
B = np.full(16, 3, dtype=np.int32)


@contextlib.asynccontextmanager
async def rest_client(dataplane: DataPlane) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture(scope="module")
async def client(dataplane) -> AsyncIterator[httpx.AsyncClient]:
    async with rest_client(dataplane) as c:
        yield c


def simple_inputs(a=A, b=B, datatype="INT32", shape=None) -> list[dict]:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return [
        {"name": "INPUT0", "datatype": datatype, "shape": shape or list(a.shape), "data": a.ravel().tolist()},
        {"name": "INPUT1", "datatype": datatype, "shape": shape or list(b.shape), "data": b.ravel().tolist()},
    ]


def outputs_of(body: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}


def assert_error(response: httpx.Response, status: int, words: str) -> None:
    """Triton's error answer: the status code and a JSON object holding only `error`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert words.lower() in body["error"].lower(), body["error"]


def write_broken_model(repository: Path) -> None:
    """A model whose config does not parse, beside the good ones."""
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "config.pbtxt").write_text('name: "broken" max_batch_size: "lots"')


# -- health and server metadata -----------------------------------------------------------------

async def test_live_and_ready_with_every_model_ready(client):
    for path in ("/v2/health/live", "/v2/health/ready"):
        response = await client.get(path)
        assert response.status_code == 200 and response.content == b""


async def test_strict_readiness_fails_with_a_broken_model_while_good_models_serve(tmp_path):
    repository = tiny_repository(tmp_path)
    write_broken_model(repository)
    async with triton_dataplane(repository) as dataplane, rest_client(dataplane) as client:
        assert (await client.get("/v2/health/live")).status_code == 200
        assert_error(await client.get("/v2/health/ready"), 503, "not ready")
        assert_error(await client.get("/v2/models/broken/ready"), 503, "broken")
        assert (await client.get("/v2/models/simple/ready")).status_code == 200
        response = await client.post("/v2/models/simple/infer", json={"inputs": simple_inputs()})
        assert response.status_code == 200
        rows = (await client.post("/v2/repository/index")).json()
        (broken,) = [r for r in rows if r["name"] == "broken"]
        assert broken["state"] == "UNAVAILABLE" and broken["reason"]


async def test_without_strict_readiness_a_broken_model_leaves_the_server_ready(tmp_path):
    repository = tiny_repository(tmp_path)
    write_broken_model(repository)
    async with triton_dataplane(repository, strict_readiness=False) as dataplane, rest_client(dataplane) as client:
        assert (await client.get("/v2/health/ready")).status_code == 200
        assert_error(await client.get("/v2/models/broken/ready"), 503, "broken")


async def test_server_metadata_names_triserve_and_its_extensions(client):
    response = await client.get("/v2")
    assert response.status_code == 200
    assert response.json() == {"name": "triserve", "version": __version__, "extensions": EXTENSIONS}
    assert {"binary_tensor_data", "classification", "statistics", "model_repository", "model_configuration"} <= set(
        EXTENSIONS
    )


# -- model metadata, configuration and readiness -------------------------------------------------

async def test_metadata_of_the_auto_completed_model(client):
    for path in ("/v2/models/doubler", "/v2/models/doubler/versions/1"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json() == {
            "name": "doubler",
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
        }


async def test_metadata_of_a_configured_model(client):
    meta = (await client.get("/v2/models/simple")).json()
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    assert [t["name"] for t in meta["outputs"]] == ["OUTPUT0", "OUTPUT1"]


async def test_config_of_the_auto_completed_model_renders_like_triton(client):
    response = await client.get("/v2/models/doubler/config")
    assert response.status_code == 200
    config = response.json()
    assert config["name"] == "doubler"
    assert (config["platform"], config["backend"]) == ("onnxruntime_onnx", "onnxruntime")
    assert config["max_batch_size"] == 4  # onnxruntime's auto-complete default, as Triton's
    assert config["input"][0] == {
        "name": "x",
        "data_type": "TYPE_FP32",
        "format": "FORMAT_NONE",
        "dims": [3],  # numbers, not protobuf JSON's int64 strings
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
        "is_non_linear_format_io": False,
    }
    assert config["output"][0]["dims"] == [3]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["instance_group"][0]["count"] >= 1
    assert "dynamic_batching" in config
    assert config["version_policy"] == {"latest": {"num_versions": 1}}


async def test_config_of_a_configured_model_keeps_its_labels(client):
    config = (await client.get("/v2/models/scores/versions/1/config")).json()
    assert config["max_batch_size"] == 4
    assert config["output"][0]["label_filename"] == "labels.txt"


async def test_model_ready_per_version(client):
    assert (await client.get("/v2/models/simple/ready")).status_code == 200
    assert (await client.get("/v2/models/simple/versions/1/ready")).status_code == 200
    # as Triton: a version the model never had is 404 "... is not found" (503 is for a known version not ready)
    assert_error(await client.get("/v2/models/simple/versions/2/ready"), 404, "'simple' version 2 is not found")
    assert_error(await client.get("/v2/models/nope/ready"), 404, "unknown model")


async def test_metadata_and_config_of_unknown_models_and_versions(client):
    assert_error(await client.get("/v2/models/nope"), 404, "unknown model: 'nope'")
    assert_error(await client.get("/v2/models/nope/config"), 404, "unknown model")
    assert_error(await client.get("/v2/models/simple/versions/7"), 404, "Request for unknown model: 'simple' version 7 is not found")
    assert_error(await client.get("/v2/models/simple/versions/7/config"), 404, "version 7 is not found")


async def test_unknown_route_and_method_answer_json_errors(client):
    assert_error(await client.get("/v2/nothing/here"), 404, "Not Found")
    assert_error(await client.get("/v2/models/simple/versions/one"), 404, "Not Found")
    assert_error(await client.get("/v2/models/simple/infer"), 405, "Method Not Allowed")


# -- statistics ----------------------------------------------------------------------------------

async def test_statistics_of_a_model_count_its_inferences(client):
    async def stats() -> dict:
        response = await client.get("/v2/models/simple/stats")
        assert response.status_code == 200
        (model,) = response.json()["model_stats"]
        return model

    before = await stats()
    for batch in (1, 3):
        body = {"inputs": simple_inputs(np.tile(A, (batch, 1)), np.tile(B, (batch, 1)))}
        assert (await client.post("/v2/models/simple/infer", json=body)).status_code == 200
    after = await stats()
    assert (after["name"], after["version"]) == ("simple", "1")
    assert after["inference_count"] == before["inference_count"] + 4
    assert after["execution_count"] == before["execution_count"] + 2
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 2
    assert after["last_inference"] > 0
    assert {1, 3} <= {b["batch_size"] for b in after["batch_stats"]}
    by_version = (await client.get("/v2/models/simple/versions/1/stats")).json()["model_stats"]
    assert [(s["name"], s["inference_count"]) for s in by_version] == [("simple", after["inference_count"])]


async def test_statistics_of_every_model(client):
    response = await client.get("/v2/models/stats")
    assert response.status_code == 200
    assert sorted(s["name"] for s in response.json()["model_stats"]) == ["doubler", "scores", "simple"]


async def test_statistics_of_unknown_models_and_versions(client):
    assert_error(await client.get("/v2/models/nope/stats"), 404, "unknown model")
    assert_error(await client.get("/v2/models/simple/versions/9/stats"), 404, "version 9 is not found")


# -- model repository ----------------------------------------------------------------------------

async def test_repository_index_lists_every_version_and_its_state(client):
    rows = (await client.post("/v2/repository/index")).json()
    assert rows == [
        {"name": name, "version": "1", "state": "READY"} for name in ("doubler", "scores", "simple")
    ]
    assert (await client.post("/v2/repository/index", json={"ready": True})).json() == rows


async def test_load_and_unload_are_refused_without_explicit_mode(client):
    for action in ("load", "unload"):
        response = await client.post(f"/v2/repository/models/simple/{action}")
        # Triton's words in NONE mode too (its aio clients' tests match them), then the mode
        assert_error(response, 503, "explicit model load / unload is not allowed if polling is enabled")
        assert_error(response, 503, "model control mode is NONE")
    assert (await client.get("/v2/models/simple/ready")).status_code == 200


@pytest.fixture
async def explicit(tmp_path) -> AsyncIterator[httpx.AsyncClient]:
    """Explicit control mode with only `simple` loaded at start."""
    repository = tiny_repository(tmp_path / "models")
    async with triton_dataplane(repository, control_mode="explicit", load_models=["simple"]) as dataplane:
        async with rest_client(dataplane) as client:
            yield client


async def test_explicit_mode_loads_and_unloads_on_request(explicit):
    index = (await explicit.post("/v2/repository/index")).json()
    assert index == [
        {"name": "doubler"},  # never asked to load: a name only, as in Triton's index
        {"name": "scores"},
        {"name": "simple", "version": "1", "state": "READY"},
    ]
    assert (await explicit.post("/v2/repository/index", json={"ready": True})).json() == [index[2]]
    assert_error(await explicit.get("/v2/models/doubler/ready"), 404, "unknown model")

    assert (await explicit.post("/v2/repository/models/doubler/load")).status_code == 200
    assert (await explicit.get("/v2/models/doubler/ready")).status_code == 200
    response = await explicit.post(
        "/v2/models/doubler/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    )
    assert outputs_of(response.json())["y"].tolist() == [[2, 4, 6]]

    response = await explicit.post("/v2/repository/models/doubler/unload", json={"parameters": {"unload_dependents": True}})
    assert response.status_code == 200
    assert_error(await explicit.get("/v2/models/doubler/ready"), 503, "doubler")
    # a version the model had, unloaded: known, so unavailable (not "not found"); one it never had is 404
    assert_error(await explicit.get("/v2/models/doubler/versions/1/ready"), 503, "doubler")
    assert_error(await explicit.get("/v2/models/doubler/versions/2/ready"), 404, "'doubler' version 2 is not found")
    rows = [r for r in (await explicit.post("/v2/repository/index")).json() if r["name"] == "doubler"]
    assert rows == [{"name": "doubler", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert (await explicit.get("/v2/models/simple/ready")).status_code == 200
    # as Triton's: a model unloaded on purpose leaves the server ready
    assert (await explicit.get("/v2/health/ready")).status_code == 200


async def test_explicit_mode_refuses_unknown_models(explicit):
    assert_error(await explicit.post("/v2/repository/models/nope/load"), 404, "nope")
    assert_error(await explicit.post("/v2/repository/models/nope/unload"), 404, "nope")


async def test_load_with_a_config_override(explicit):
    config = json.dumps({"max_batch_size": 2})
    response = await explicit.post("/v2/repository/models/simple/load", json={"parameters": {"config": config}})
    assert response.status_code == 200, response.text
    assert (await explicit.get("/v2/models/simple/config")).json()["max_batch_size"] == 2
    two = {"inputs": simple_inputs(np.tile(A, (2, 1)), np.tile(B, (2, 1)))}
    assert (await explicit.post("/v2/models/simple/infer", json=two)).status_code == 200
    three = {"inputs": simple_inputs(np.tile(A, (3, 1)), np.tile(B, (3, 1)))}
    assert_error(await explicit.post("/v2/models/simple/infer", json=three), 400, "batch-size must be <= 2")


@pytest.mark.parametrize(
    "parameters, words",
    [
        ({"config": "{not json"}, "failed to parse model config JSON"),
        ({"config": {"max_batch_size": 2}}, "the 'config' parameter must be the model configuration as JSON text"),
        ({"config": json.dumps({"max_batch_size": "many"})}, "failed to parse model config JSON"),
    ],
    ids=["malformed JSON", "an object, not text", "a wrong field type"],
)
async def test_load_with_a_bad_config_keeps_the_old_version(explicit, parameters, words):
    response = await explicit.post("/v2/repository/models/simple/load", json={"parameters": parameters})
    assert_error(response, 400, words)
    # Triton's words (simple_http_model_control.py looks for "failed to load")
    assert response.json()["error"].startswith("failed to load 'simple', failed to poll from model repository: ")
    assert (await explicit.get("/v2/models/simple/config")).json()["max_batch_size"] == 8


UPLOADED_CONFIG = json.dumps({
    "name": "uploaded",
    "platform": "onnxruntime_onnx",
    "max_batch_size": 2,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
})


async def test_load_a_model_from_base64_file_parameters(explicit, tmp_path):
    doubler_onnx(tmp_path / "doubler.onnx")
    content = base64.b64encode((tmp_path / "doubler.onnx").read_bytes()).decode()
    parameters = {"config": UPLOADED_CONFIG, "file:1/model.onnx": content}
    response = await explicit.post("/v2/repository/models/uploaded/load", json={"parameters": parameters})
    assert response.status_code == 200, response.text
    meta = (await explicit.get("/v2/models/uploaded")).json()
    assert (meta["name"], meta["versions"]) == ("uploaded", ["1"])
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0.5, 1, -2]}]}
    response = await explicit.post("/v2/models/uploaded/infer", json=body)
    assert outputs_of(response.json())["y"].tolist() == [[1, 2, -4]]


@pytest.mark.parametrize(
    "parameters, status, words",
    [
        ({"file:1/model.onnx": "AAAA"}, 400, "a 'config' parameter must be given with 'file:' parameters"),
        ({"config": UPLOADED_CONFIG, "file:1/model.onnx": "not base64!"}, 400, "must be base64-encoded"),
        ({"config": UPLOADED_CONFIG, "file:../escape/model.onnx": "AAAA"}, 400, "must stay inside the model folder"),
        ({"config": UPLOADED_CONFIG, "file:model.onnx": "AAAA"}, 404, "no numeric version folder"),
    ],
    ids=["files without config", "not base64", "path outside the folder", "no version folder"],
)
async def test_load_with_bad_file_parameters(explicit, parameters, status, words):
    response = await explicit.post("/v2/repository/models/uploaded/load", json={"parameters": parameters})
    assert_error(response, status, words)
    if "base64" not in words:  # the body's own encoding is the HTTP front end's to refuse, not a poll
        assert_error(response, status, "failed to load 'uploaded', failed to poll from model repository: ")


async def test_repository_requests_with_malformed_json(explicit):
    assert_error(await explicit.post("/v2/repository/index", content=b"{"), 400, "failed to parse")
    assert_error(await explicit.post("/v2/repository/models/simple/load", content=b"[1]"), 400, "must be an object")
    for action in ("load", "unload"):
        response = await explicit.post(f"/v2/repository/models/simple/{action}", json={"parameters": ["config"]})
        assert_error(response, 400, "'parameters' must be an object")
    assert (await explicit.get("/v2/models/simple/ready")).status_code == 200


# -- inference in JSON ---------------------------------------------------------------------------

async def test_json_inference_adds_and_subtracts(client):
    response = await client.post("/v2/models/simple/infer", json={"id": "r1", "inputs": simple_inputs()})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["id"], body["model_name"], body["model_version"]) == ("r1", "simple", "1")
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("OUTPUT0", "INT32", [1, 16]),
        ("OUTPUT1", "INT32", [1, 16]),
    ]
    outputs = outputs_of(body)
    assert outputs["OUTPUT0"].tolist() == [(A + B).tolist()]
    assert outputs["OUTPUT1"].tolist() == [(A - B).tolist()]


async def test_json_inference_takes_nested_data_and_answers_only_the_outputs_asked_for(client):
    inputs = simple_inputs(np.stack([A, A]), np.stack([B, -B]))
    inputs[0]["data"] = np.stack([A, A]).tolist()  # nested rows, as well as flat
    body = {"inputs": inputs, "outputs": [{"name": "OUTPUT1"}]}
    response = await client.post("/v2/models/simple/infer", json=body)
    answer = response.json()
    assert "id" not in answer
    assert [o["name"] for o in answer["outputs"]] == ["OUTPUT1"]
    assert outputs_of(answer)["OUTPUT1"].tolist() == [(A - B).tolist(), (A + B).tolist()]


async def test_a_versioned_infer_url(client):
    response = await client.post("/v2/models/simple/versions/1/infer", json={"inputs": simple_inputs()})
    assert response.status_code == 200 and response.json()["model_version"] == "1"


async def test_concurrent_requests_each_get_their_own_answer(client):
    """`doubler` batches dynamically: requests queued together may run as one batch."""
    async def double(i: int) -> list:
        body = {"id": str(i), "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [i, i + 1, -i]}]}
        answer = (await client.post("/v2/models/doubler/infer", json=body)).json()
        assert answer["id"] == str(i)
        return outputs_of(answer)["y"].tolist()

    answers = await asyncio.gather(*(double(i) for i in range(8)))
    assert answers == [[[2 * i, 2 * i + 2, -2 * i]] for i in range(8)]


async def test_priority_and_timeout_parameters_are_accepted(client):
    body = {"inputs": simple_inputs(), "parameters": {"priority": 1, "timeout": 10_000_000}}
    assert (await client.post("/v2/models/simple/infer", json=body)).status_code == 200


# -- binary tensor extension ---------------------------------------------------------------------

def binary_request(outputs: list[httpclient.InferRequestedOutput] | None = None, **kwargs) -> tuple[bytes, dict[str, str]]:
    """A body as tritonclient.http writes it: JSON header, then the raw input tensors; without
    `outputs`, every output is asked for in binary (`binary_data_output`)."""
    inputs = []
    for name, array in (("INPUT0", A[None]), ("INPUT1", B[None])):
        tensor = httpclient.InferInput(name, list(array.shape), "INT32")
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)
    assert (b'"binary_data_output":true' in body) == (outputs is None)
    return body, {"Inference-Header-Content-Length": str(json_size)}


def json_outputs(*names: str) -> list[httpclient.InferRequestedOutput]:
    return [httpclient.InferRequestedOutput(name, binary_data=False) for name in names]


async def test_binary_inputs_with_json_outputs(client):
    body, headers = binary_request(json_outputs("OUTPUT0", "OUTPUT1"))
    response = await client.post("/v2/models/simple/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in response.headers
    assert outputs_of(response.json())["OUTPUT0"].tolist() == [(A + B).tolist()]


async def test_binary_inputs_and_outputs_read_by_tritonclient(client):
    body, headers = binary_request(request_id="b1")
    response = await client.post("/v2/models/simple/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:header_length])
    assert [o["parameters"] for o in header["outputs"]] == [{"binary_data_size": 64}, {"binary_data_size": 64}]
    result = httpclient.InferenceServerClient.parse_response_body(response.content, header_length=header_length)
    assert result.get_response()["id"] == "b1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (A + B)[None])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), (A - B)[None])


async def test_binary_data_per_output(client):
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True), httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    body, headers = binary_request(outputs=outputs)
    response = await client.post("/v2/models/simple/infer", content=body, headers=headers)
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:header_length])
    assert "data" not in header["outputs"][0] and header["outputs"][1]["data"] == (A - B).tolist()
    assert np.frombuffer(response.content[header_length:], "<i4").tolist() == (A + B).tolist()


# -- compression ---------------------------------------------------------------------------------

COMPRESSORS = {"gzip": gzip.compress, "deflate": zlib.compress}


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
async def test_compressed_request_and_response(client, algorithm):
    body, headers = binary_request()
    headers = {**headers, "Content-Encoding": algorithm, "Accept-Encoding": algorithm}
    response = await client.post("/v2/models/simple/infer", content=COMPRESSORS[algorithm](body), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-encoding"] == algorithm
    # httpx has decoded the body; the header length counts the uncompressed header, as Triton's
    header_length = int(response.headers["inference-header-content-length"])
    result = httpclient.InferenceServerClient.parse_response_body(response.content, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (A + B)[None])


async def test_response_encoding_follows_the_client_preference(client):
    body = {"inputs": simple_inputs()}
    for accept, chosen in (("gzip;q=0.5, deflate;q=0.9", "deflate"), ("identity", None), ("br", None)):
        response = await client.post("/v2/models/simple/infer", json=body, headers={"Accept-Encoding": accept})
        assert response.status_code == 200
        assert response.headers.get("content-encoding") == chosen
        assert outputs_of(response.json())["OUTPUT0"].tolist() == [(A + B).tolist()]


# -- classification extension --------------------------------------------------------------------

SCORES = [[0.1, 0.5, 0.2, 0.9, 0.3], [0.7, 0.1, 0.8, 0.0, 0.2]]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_classification_answers_the_top_classes_with_labels(client, binary):
    body = {
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2, 5], "data": SCORES}],
        "outputs": [{"name": "OUTPUT", "parameters": {"classification": 2, "binary_data": binary}}],
    }
    response = await client.post("/v2/models/scores/infer", json=body)
    assert response.status_code == 200, response.text
    header_length = response.headers.get("inference-header-content-length")
    result = httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=int(header_length) if header_length else None
    )
    assert result.get_output("OUTPUT")["datatype"] == "BYTES"
    classes = [[c.decode() if isinstance(c, bytes) else c for c in row] for row in result.as_numpy("OUTPUT")]
    assert classes == [
        ["0.900000:3:three", "0.500000:1:one"],
        ["0.800000:2:two", "0.700000:0:zero"],
    ]


@pytest.mark.parametrize("count", [-1, "2", 1.5, True])
async def test_classification_count_must_be_a_non_negative_integer(client, count):
    body = {
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 5], "data": SCORES[0]}],
        "outputs": [{"name": "OUTPUT", "parameters": {"classification": count}}],
    }
    assert_error(await client.post("/v2/models/scores/infer", json=body), 400, "'classification' must be a non-negative integer")


# -- bad requests --------------------------------------------------------------------------------

def _with(**changes) -> dict:
    inputs = simple_inputs()
    inputs[0].update(changes)
    return {"inputs": inputs}


BAD_JSON_REQUESTS = [
    ("unknown model", "/v2/models/nope/infer", {"inputs": simple_inputs()}, 404, "unknown model: 'nope'"),
    ("unknown version", "/v2/models/simple/versions/3/infer", {"inputs": simple_inputs()}, 404, "version 3 is not found"),
    ("wrong datatype", None, {"inputs": simple_inputs(datatype="FP32")}, 400, "data-type is 'FP32', but model 'simple' expects 'INT32'"),
    ("wrong shape", None, {"inputs": simple_inputs(A[:15], B[:15])}, 400, "unexpected shape for input 'INPUT0'"),
    ("no batch dimension", None, {"inputs": simple_inputs(shape=[16])}, 400, "unexpected shape"),
    ("batch above max_batch_size", None, {"inputs": simple_inputs(np.tile(A, (9, 1)), np.tile(B, (9, 1)))}, 400, "batch-size must be <= 8"),
    ("batch sizes disagree", None, {"inputs": simple_inputs(np.tile(A, (2, 1)), B)}, 400, "does not match the batch size"),
    ("element count", None, _with(data=list(range(8))), 400, "unexpected number of elements 8 for shape [1, 16]"),
    ("negative dimension", None, _with(shape=[1, -16]), 400, "shape must be a list of non-negative integers"),
    ("unknown datatype", None, _with(datatype="FP33"), 400, "unknown datatype 'FP33'"),
    ("FP16 in JSON", None, _with(datatype="FP16"), 400, "sending FP16 data via JSON is not supported"),
    ("values of the wrong type", None, _with(data=["a"] * 16), 400, "not a valid INT32 array"),
    ("fractions for integers", None, _with(data=[0.5] * 16), 400, "not a valid INT32 array: expected JSON integers"),
    ("missing input", None, {"inputs": simple_inputs()[:1]}, 400, "missing required input(s) ['INPUT1']"),
    ("unknown input", None, {"inputs": [*simple_inputs(), {**simple_inputs()[0], "name": "INPUT2"}]}, 400, "unexpected inference input 'INPUT2'"),
    ("input given twice", None, {"inputs": [*simple_inputs(), simple_inputs()[0]]}, 400, "input 'INPUT0' is given twice"),
    ("no data", None, {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16]}]}, 400, "But no field is set"),
    ("no inputs", None, {"inputs": []}, 400, "'inputs' array with at least one input"),
    ("unknown output", None, {"inputs": simple_inputs(), "outputs": [{"name": "OUTPUT9"}]}, 400, "unexpected inference output 'OUTPUT9'"),
    ("outputs not an array", None, {"inputs": simple_inputs(), "outputs": {"name": "OUTPUT0"}}, 400, "'outputs' must be an array"),
    ("parameters not an object", None, {"inputs": simple_inputs(), "parameters": [1]}, 400, "'parameters' must be an object"),
    ("priority not an integer", None, {"inputs": simple_inputs(), "parameters": {"priority": "high"}}, 400, "'priority' must be a non-negative integer"),
    ("negative priority", None, {"inputs": simple_inputs(), "parameters": {"priority": -1}}, 400, "'priority' must be a non-negative integer"),
    ("boolean priority", None, {"inputs": simple_inputs(), "parameters": {"priority": True}}, 400, "'priority' must be a non-negative integer"),
    ("negative timeout", None, {"inputs": simple_inputs(), "parameters": {"timeout": -5}}, 400, "'timeout' must be a non-negative integer"),
    ("timeout not an integer", None, {"inputs": simple_inputs(), "parameters": {"timeout": "soon"}}, 400, "'timeout' must be a non-negative integer"),
]


@pytest.mark.parametrize("case", BAD_JSON_REQUESTS, ids=lambda c: c[0])
async def test_bad_json_requests_get_triton_errors(client, case):
    _, path, body, status, words = case
    response = await client.post(path or "/v2/models/simple/infer", json=body)
    assert_error(response, status, words)


def _binary_body(size: int, blob: bytes, header_length: int | None = None, **input_fields) -> tuple[bytes, dict]:
    inputs = simple_inputs()
    inputs[0] = {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": size}, **input_fields}
    header = json.dumps({"inputs": inputs}).encode()
    length = len(header) if header_length is None else header_length
    return header + blob, {"Inference-Header-Content-Length": str(length)}


BAD_RAW_BODIES = [
    ("malformed JSON", b'{"inputs": [', {}, "failed to parse the request JSON"),
    ("JSON not an object", b"[1, 2]", {}, "must be an object"),
    ("binary size past the end", *_binary_body(64, A.tobytes()[:60]), "goes past the end of the binary data"),
    ("binary of the wrong size", *_binary_body(60, A.tobytes()[:60]), "unexpected size 60 bytes for datatype INT32"),
    ("unclaimed binary data", *_binary_body(64, A.tobytes() + b"xx"), "2 bytes of binary data that no input claims"),
    ("data and binary both", *_binary_body(64, A.tobytes(), data=A.tolist()), "But both are set"),
    ("header length beyond the body", *_binary_body(64, A.tobytes(), header_length=10_000), "Inference-Header-Content-Length"),
    ("header length not a number", b"{}", {"Inference-Header-Content-Length": "ten"}, "Inference-Header-Content-Length"),
    ("corrupt gzip", b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, "failed to decompress the request body as gzip"),
    ("unsupported encoding", b"{}", {"Content-Encoding": "br"}, "unsupported Content-Encoding 'br'"),
]


@pytest.mark.parametrize("case", BAD_RAW_BODIES, ids=lambda c: c[0])
async def test_bad_bodies_get_400_with_the_reason(client, case):
    _, body, headers, words = case
    response = await client.post("/v2/models/simple/infer", content=body, headers=headers)
    assert_error(response, 400, words)


async def test_good_requests_succeed_after_bad_ones(client):
    for _, path, body, _, _ in BAD_JSON_REQUESTS:
        await client.post(path or "/v2/models/simple/infer", json=body)
    response = await client.post("/v2/models/simple/infer", json={"inputs": simple_inputs()})
    assert response.status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200


# -- BYTES tensors end to end (string models) ----------------------------------------------------

def _float_identity_onnx(path: Path, dims: list) -> None:
    """FP32 identity with the given dims (after the batch dim), for raw binary requests."""
    from onnx import TensorProto, helper

    from tests.inprocess import _save

    tensor = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])  # noqa: E731
    _save(helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "f", [tensor("INPUT0")], [tensor("OUTPUT0")]), path)


def _identity_config(name: str, data_type: str, dims: list[int]) -> str:
    return (
        f'name: "{name}" platform: "onnxruntime_onnx" max_batch_size: 8'
        f' input [ {{ name: "INPUT0" data_type: {data_type} dims: {dims} }} ]'
        f' output [ {{ name: "OUTPUT0" data_type: {data_type} dims: {dims} }} ]'
    )


@pytest.fixture(scope="module")
async def strings(tmp_path_factory) -> AsyncIterator[httpx.AsyncClient]:
    """`simple_string` and `simple_identity` (tests/inprocess.py), plus models shaped for raw
    binary requests: one string element, FP32 with one and with two variable dims."""
    from tests.inprocess import string_identity_onnx, string_repository

    root = string_repository(tmp_path_factory.mktemp("strings"))
    string_identity_onnx(root / "one_string" / "1" / "model.onnx")
    (root / "one_string" / "config.pbtxt").write_text(_identity_config("one_string", "TYPE_STRING", [1]))
    _float_identity_onnx(root / "floats" / "1" / "model.onnx", ["n"])
    (root / "floats" / "config.pbtxt").write_text(_identity_config("floats", "TYPE_FP32", [-1]))
    _float_identity_onnx(root / "grid" / "1" / "model.onnx", ["h", "w"])
    (root / "grid" / "config.pbtxt").write_text(_identity_config("grid", "TYPE_FP32", [-1, -1]))
    async with triton_dataplane(root) as plane, rest_client(plane) as c:
        yield c


NUMBERS = [str(i) for i in range(16)]


async def test_string_model_adds_numbers_sent_as_json_strings(strings):
    body = {"inputs": [
        {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "data": NUMBERS},
        {"name": "INPUT1", "datatype": "BYTES", "shape": [1, 16], "data": ["1"] * 16},
    ]}
    response = await strings.post("/v2/models/simple_string/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["OUTPUT0"]["datatype"] == "BYTES" and outputs["OUTPUT0"]["shape"] == [1, 16]
    assert outputs["OUTPUT0"]["data"] == [str(i + 1) for i in range(16)]
    assert outputs["OUTPUT1"]["data"] == [str(i - 1) for i in range(16)]


async def test_string_model_with_binary_and_json_tensors_as_tritonclient_sends_them(strings):
    """simple_http_string_infer_client.py's request: INPUT0 binary, INPUT1 JSON, OUTPUT0 binary,
    OUTPUT1 JSON; tritonclient reads the answer."""
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"), httpclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[s.encode() for s in NUMBERS]], dtype=np.object_), binary_data=True)
    inputs[1].set_data_from_numpy(np.array([[b"1"] * 16], dtype=np.object_), binary_data=False)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True), httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    response = await strings.post("/v2/models/simple_string/infer", content=body,
                                  headers={"Inference-Header-Content-Length": str(json_size)})
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    result = httpclient.InferenceServerClient.parse_response_body(response.content, header_length=length)
    assert [int(x) for x in result.as_numpy("OUTPUT0")[0]] == [i + 1 for i in range(16)]
    assert [int(x) for x in result.as_numpy("OUTPUT1")[0]] == [i - 1 for i in range(16)]
    assert result.as_numpy("OUTPUT0").dtype == np.object_ and isinstance(result.as_numpy("OUTPUT0")[0][0], bytes)


STRANGE = [b"he\x00llo", "é€😀".encode(), b"", b"\x00\x01\x02\x03", b"b'1'"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "JSON"])
async def test_bytes_come_back_unchanged_through_a_string_identity_model(strings, binary):
    array = np.array([STRANGE], dtype=np.object_)
    tensor = httpclient.InferInput("INPUT0", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    )
    headers = {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {}
    response = await strings.post("/v2/models/simple_identity/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    if binary:
        length = int(response.headers["inference-header-content-length"])
        result = httpclient.InferenceServerClient.parse_response_body(response.content, header_length=length)
        assert result.as_numpy("OUTPUT0").tolist() == [STRANGE]
    else:
        (output,) = response.json()["outputs"]
        assert output["data"] == [s.decode() for s in STRANGE]


async def test_bytes_that_are_not_utf8_are_refused_for_an_onnx_string_input(strings):
    tensor = httpclient.InferInput("INPUT0", [1, 2], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"ok", b"\xff\xfe"]], dtype=np.object_), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    response = await strings.post("/v2/models/simple_identity/infer", content=body,
                                  headers={"Inference-Header-Content-Length": str(json_size)})
    assert_error(response, 400, "input 'INPUT0': element 1 is not UTF-8 text")


# -- raw binary requests (Inference-Header-Content-Length: 0) ---------------------------------

RAW = {"Inference-Header-Content-Length": "0"}


def _raw_output(response: httpx.Response) -> tuple[dict, bytes]:
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])  # outputs are binary
    return json.loads(response.content[:length]), response.content[length:]


async def test_raw_binary_request_is_the_single_input_with_the_configured_shape(client):
    data = np.arange(5, dtype=np.float32)
    header, blob = _raw_output(await client.post("/v2/models/scores/infer", content=data.tobytes(), headers=RAW))
    (output,) = header["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("OUTPUT", "FP32", [1, 5])
    assert output["parameters"] == {"binary_data_size": 20} and blob == data.tobytes()


@pytest.mark.parametrize("count", [8, 32])
async def test_raw_binary_request_sizes_the_variable_dimension_from_the_data(strings, count):
    data = np.arange(count, dtype=np.float32).tobytes()
    header, blob = _raw_output(await strings.post("/v2/models/floats/infer", content=data, headers=RAW))
    assert header["outputs"][0]["shape"] == [1, count] and blob == data


async def test_raw_binary_string_input_is_one_element_answered_with_its_length_prefix(strings):
    """Triton's QA test_byte: the answer is the BYTES output, its 4-byte length first."""
    header, blob = _raw_output(await strings.post("/v2/models/one_string/infer", content=b"427", headers=RAW))
    assert header["outputs"][0]["datatype"] == "BYTES"
    assert blob == (3).to_bytes(4, "little") + b"427"


@pytest.mark.parametrize("model, body, words", [
    ("simple", bytes(128), "[request id: <id_unknown>] Raw request must only have 1 input (found 1) to be deduced"
                           " but got 2 inputs in 'simple' model configuration"),
    ("simple_identity", b"427", "For BYTE datatype raw input 'INPUT0', the model must have input shape [1]"),
    ("grid", bytes(16), "The shape of the raw input 'INPUT0' can not be deduced because there are more than one"
                        " variable-sized dimension"),
], ids=["several inputs", "strings not of shape [1]", "two variable dims"])
async def test_raw_binary_requests_triton_refuses(strings, client, model, body, words):
    target = client if model == "simple" else strings
    assert_error(await target.post(f"/v2/models/{model}/infer", content=body, headers=RAW), 400, words)


async def test_raw_binary_request_of_the_wrong_size(client):
    response = await client.post("/v2/models/scores/infer", content=bytes(12), headers=RAW)
    assert_error(response, 400, "unexpected size 12 bytes for datatype FP32 and shape [1, 5], expected 20 bytes")


# -- Triton's words where its clients and tests match them ----------------------------------

async def test_the_model_is_looked_up_before_the_body_is_read(client):
    for path, words in (("/v2/models/nope/infer", "Request for unknown model: 'nope' is not found"),
                        ("/v2/models/simple/versions/99/infer", "Request for unknown model: 'simple' version 99 is not found")):
        assert_error(await client.post(path, content=b"not JSON at all"), 404, words)
        assert_error(await client.post(path, content=b"\x00", headers=RAW), 404, words)


@pytest.mark.parametrize("value, words", [
    ("ten", "Unable to parse Inference-Header-Content-Length, got: ten"),
    ("99999999999", "inference header size should be in range (0, 2), got: 99999999999"),
    ("-1", "inference header size should be in range (0, 2), got: -1"),
])
async def test_a_bad_header_length_in_tritons_words(client, value, words):
    response = await client.post("/v2/models/scores/infer", content=b"{}", headers={"Inference-Header-Content-Length": value})
    assert_error(response, 400, words)


async def test_load_errors_in_tritons_words(explicit, tmp_path):
    # a name the repository does not have (simple_http_model_control.py matches "failed to load")
    response = await explicit.post("/v2/repository/models/wrong_model_name/load")
    assert_error(response, 404, "failed to load 'wrong_model_name', failed to poll from model repository")
    # a model that is found but fails to build: "load failed for model", as Triton's lifecycle tests match
    parameters = {"config": json.dumps({"max_batch_size": 2, "platform": "onnxruntime_onnx",
                                        "input": [{"name": "nope", "data_type": "TYPE_FP32", "dims": [3]}]})}
    response = await explicit.post("/v2/repository/models/doubler/load", json={"parameters": parameters})
    assert_error(response, 400, "load failed for model 'doubler': ")
    assert_error(response, 400, "'nope'")


async def test_a_decoupled_model_is_refused_in_tritons_words_before_the_body_is_read_or_traced(tmp_path):
    async with triton_dataplane(repeat_repository(tmp_path / "models")) as plane:
        tracer = trace.Tracer(trace.TraceValues(level=("TIMESTAMPS", "TENSORS"), rate=1, file=str(tmp_path / "t.json")))
        transport = httpx.ASGITransport(app=V2HTTP(plane, tracer=tracer).app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            body = {"inputs": [{"name": "IN", "datatype": "INT32", "shape": [2], "data": [1, 2]}]}
            # Triton's HTTPAPIServer::CheckTransactionPolicy: UNSUPPORTED, which Triton's HTTP codes make 501
            assert_error(await http.post("/v2/models/repeat/infer", json=body), 501,
                         "HTTP end point doesn't support models with decoupled transaction policy")
            assert_error(await http.post("/v2/models/repeat/versions/1/infer", content=b"not json"), 501,
                         "HTTP end point doesn't support models with decoupled transaction policy")
            ok = await http.post("/v2/models/simple/infer", json={"inputs": simple_inputs()})
            assert ok.status_code == 200, ok.text
    trace.WRITER.submit(lambda: None).result()
    items = json.loads((tmp_path / "t.json").read_text())
    # the refused requests were never sampled: the first trace is the simple model's, with id 1
    assert [i for i in items if "model_name" in i] == [{"id": 1, "model_name": "simple", "model_version": 1}]


@pytest.mark.anyio
async def test_binary_fixed_size_inputs_are_views_of_the_body_read_without_a_thread_hop(tmp_path, monkeypatch):
    from triserve.protocols.kserve import rest
    from triserve.protocols.transport import offload

    hopped, off_loop = [], offload.off_loop

    async def counted(work, *args):
        hopped.append(work)
        return await off_loop(work, *args)

    monkeypatch.setattr(offload, "OFF_LOOP_SIZE", 0)  # any work that counts goes to a thread
    monkeypatch.setattr(offload, "off_loop", counted)
    x = np.arange(12, dtype="<f4").reshape(4, 3)
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 3],
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    body = header + x.tobytes()
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        request, _ = await rest.decode_infer_request(dataplane.model("doubler", None), json.loads(header),
                                                     memoryview(body)[len(header):])
        assert np.shares_memory(request.inputs["x"], np.frombuffer(body, np.uint8))
        assert rest._read_inputs not in hopped  # viewing binary FP32 data needs no worker thread
        transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/v2/models/doubler/infer", content=body,
                                         headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(np.frombuffer(response.content[length:], "<f4").reshape(4, 3), 2 * x)
