"""TF Serving REST API in-process (the Starlette app over httpx's ASGI transport): predict in row
and columnar formats, classify and regress, status and metadata by version and label, TF
Serving's errors, compressed bodies and the Prometheus metrics; TF Serving's own test models
answering what api_rest.md and TF Serving's REST handler tests show, on every signature."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import math
import zlib
from typing import AsyncIterator

import httpx
import numpy as np
import pytest

from tests.inprocess import running_dataplane
from tests.protocols.tfserving.models import (
    CLASSIFIER,
    HALF_PLUS_THREE,
    HALF_PLUS_TWO,
    PLUS,
    REGRESSOR,
    STRINGS,
    TESTDATA,
    TWO_VERSIONS,
)
from triserve.core.dataplane import DataPlane
from triserve.protocols.tfserving.rest import TFServingREST, model_of
from triserve.repository.triton import TritonRepositories


@contextlib.asynccontextmanager
async def rest_client(dataplane: DataPlane) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=TFServingREST(dataplane).app())
    async with httpx.AsyncClient(transport=transport, base_url="http://tfserving") as client:
        yield client


@pytest.fixture(scope="module")
async def rest(models_conf, triton_repository) -> AsyncIterator[httpx.AsyncClient]:
    """The tiny ONNX models, the SavedModels and TF Serving's test models behind one REST app;
    tests only read and predict."""
    catalog = models_conf(PLUS, STRINGS, CLASSIFIER, REGRESSOR, HALF_PLUS_TWO, HALF_PLUS_THREE, TWO_VERSIONS)
    async with running_dataplane([catalog, TritonRepositories([triton_repository])]) as dataplane:
        async with rest_client(dataplane) as client:
            yield client


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def error(response: httpx.Response, status: int) -> str:
    """TF Serving's error body: {"error": message}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and body["error"]
    return body["error"]


def row(value: int) -> list[int]:
    return [value] * 16


# -- predict ------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_row_format_with_named_instances_answers_an_object_per_instance(rest):
    instances = [{"INPUT0": row(5), "INPUT1": row(2)}, {"INPUT0": row(1), "INPUT1": row(3)}]
    body = ok(await rest.post("/v1/models/simple:predict", json={"instances": instances}))
    assert body == {
        "predictions": [{"OUTPUT0": row(7), "OUTPUT1": row(3)}, {"OUTPUT0": row(4), "OUTPUT1": row(-2)}]
    }


@pytest.mark.anyio
async def test_row_format_of_a_single_input_takes_plain_values(rest):
    response = await rest.post("/v1/models/doubler:predict", json={"instances": [[1, 2, 3], [0.5, 0, -1]]})
    assert ok(response) == {"predictions": [[2, 4, 6], [1, 0, -2]]}
    assert response.text.replace(" ", "") == '{"predictions":[[2.0,4.0,6.0],[1.0,0.0,-2.0]]}'  # floats stay floats


@pytest.mark.anyio
async def test_columnar_format_named_and_unnamed(rest):
    named = ok(await rest.post("/v1/models/simple:predict", json={"inputs": {"INPUT0": [row(5)], "INPUT1": [row(2)]}}))
    assert named == {"outputs": {"OUTPUT0": [row(7)], "OUTPUT1": [row(3)]}}
    unnamed = ok(await rest.post("/v1/models/doubler:predict", json={"inputs": [[1, 2, 3]]}))
    assert unnamed == {"outputs": [[2, 4, 6]]}


@pytest.mark.parametrize(
    "path,added",
    [
        ("/v1/models/plus:predict", 2.0),  # the latest version the policy serves
        ("/v1/models/plus/versions/1:predict", 1.0),
        ("/v1/models/plus/labels/stable:predict", 1.0),
        ("/v1/models/plus/labels/canary:predict", 2.0),
    ],
)
@pytest.mark.anyio
async def test_predict_by_version_and_label(rest, path, added):
    assert ok(await rest.post(path, json={"instances": [[10.0]]})) == {"predictions": [[10.0 + added]]}


@pytest.mark.anyio
async def test_batches_above_max_batch_size_are_answered_in_order(rest):
    # TF Serving has no batch limit; simple's max_batch_size is 8 and plus's 4 (auto-completed)
    instances = [{"INPUT0": row(i), "INPUT1": row(1)} for i in range(20)]
    body = ok(await rest.post("/v1/models/simple:predict", json={"instances": instances}))
    assert [p["OUTPUT0"] for p in body["predictions"]] == [row(i + 1) for i in range(20)]
    body = ok(await rest.post("/v1/models/plus/versions/1:predict", json={"inputs": [[float(i)] for i in range(10)]}))
    assert body == {"outputs": [[i + 1.0] for i in range(10)]}


@pytest.mark.anyio
async def test_strings_take_text_and_b64_and_outputs_named_bytes_come_back_as_b64(rest):
    instances = [["abc"], [{"b64": base64.b64encode(b"\xff\x00x").decode()}]]
    first, second = ok(await rest.post("/v1/models/strings:predict", json={"instances": instances}))["predictions"]
    assert first == {"length": [3], "upper": ["ABC"], "echo_bytes": [{"b64": base64.b64encode(b"abc").decode()}]}
    assert second["length"] == [3]
    assert base64.b64decode(second["echo_bytes"][0]["b64"]) == b"\xff\x00x"
    columnar = ok(await rest.post("/v1/models/strings:predict", json={"inputs": {"text": [["a"], ["bb"]]}}))
    assert columnar["outputs"]["length"] == [[1], [2]]
    assert columnar["outputs"]["upper"] == [["A"], ["BB"]]


@pytest.mark.anyio
async def test_nan_and_infinity_tokens_go_in_and_come_out(rest):
    response = await rest.post("/v1/models/doubler:predict", content=b'{"instances": [[NaN, Infinity, -Infinity]]}')
    assert response.status_code == 200, response.text
    assert response.text.replace(" ", "") == '{"predictions":[[NaN,Infinity,-Infinity]]}'
    (values,) = json.loads(response.text)["predictions"]  # Python's json reads the tokens, as clients do
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf]


# -- classify and regress -----------------------------------------------------------------
@pytest.mark.anyio
async def test_classify_answers_label_score_pairs_per_example(rest):
    body = ok(await rest.post("/v1/models/classifier:classify", json={"context": {"x": 0.0}, "examples": [{"x": 2.0}, {}]}))
    first, second = body["results"]
    assert [label for label, _ in first] == ["pos", "neg"]
    assert first[0][1] == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-5)
    assert second == [["pos", 0.5], ["neg", 0.5]]  # the context's x


@pytest.mark.anyio
async def test_regress_answers_one_value_per_example(rest):
    response = await rest.post("/v1/models/regressor:regress", json={"examples": [{"x": 1.0}, {"x": [2.0]}, {"x": 1.5}]})
    assert ok(response) == {"results": [3.0, 5.0, 4.0]}
    assert response.text.replace(" ", "") == '{"results":[3.0,5.0,4.0]}'
    response = await rest.post("/v1/models/regressor:regress", content=b'{"examples": [{"x": NaN}, {"x": -Infinity}]}')
    assert response.text.replace(" ", "") == '{"results":[NaN,-Infinity]}'


@pytest.mark.anyio
async def test_more_examples_than_max_batch_size_are_answered_in_order(rest):
    examples = [{"x": float(i)} for i in range(10)]  # the regressor's max_batch_size is 4
    assert ok(await rest.post("/v1/models/regressor:regress", json={"examples": examples})) == {
        "results": [2.0 * i + 1 for i in range(10)]
    }
    results = ok(await rest.post("/v1/models/classifier:classify", json={"examples": examples}))["results"]
    assert [scores[0][1] for scores in results] == pytest.approx([1 / (1 + math.exp(-i)) for i in range(10)], rel=1e-5)


@pytest.mark.anyio
async def test_classify_and_regress_need_a_signature_of_their_layout(rest):
    """As TF Serving checks them by default: the signature's keys, not its method_name."""
    assert error(await rest.post("/v1/models/simple:classify", json={"examples": [{"x": 1.0}]}), 400) == (
        "Expected one input Tensor."
    )
    assert error(await rest.post("/v1/models/classifier:regress", json={"examples": [{"x": 1.0}]}), 400) == (
        "Expected one output Tensor."
    )
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}
    assert error(await rest.post("/v1/models/half_plus_two:classify", json=body), 400) == (
        'Expected classification signature outputs to contain at least one of "classes" or "scores".'
    )
    body = {"signature_name": "nope", "examples": [{"x": 1.0}]}
    assert error(await rest.post("/v1/models/half_plus_two:regress", json=body), 400) == (
        "No signature was found with the name: nope"
    )
    assert error(await rest.post("/v1/models/classifier:classify", json={"instances": [1]}), 400) == (
        "JSON Value: When method is classify, key 'examples' is expected and was not found"
    )


# -- status and metadata ------------------------------------------------------------------
@pytest.mark.anyio
async def test_status_lists_the_versions_the_policy_serves(rest):
    assert ok(await rest.get("/v1/models/plus")) == {
        "model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in (1, 2)  # version 3 is on disk, but the specific policy names 1 and 2
        ]
    }
    assert [s["version"] for s in ok(await rest.get("/v1/models/plus/versions/1"))["model_version_status"]] == ["1"]
    assert [s["version"] for s in ok(await rest.get("/v1/models/plus/labels/canary"))["model_version_status"]] == ["2"]
    assert ok(await rest.get("/v1/models/simple"))["model_version_status"][0]["state"] == "AVAILABLE"


@pytest.mark.anyio
async def test_metadata_nests_the_signature_def_map_as_tf_serving_does(rest):
    body = ok(await rest.get("/v1/models/simple/metadata"))
    assert body["model_spec"] == {"name": "simple", "version": "1", "signature_name": ""}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["INPUT0"] == {
        "name": "INPUT0",
        "dtype": "DT_INT32",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "16", "name": ""}], "unknown_rank": False},
    }  # int64 as strings and every field, as proto3 JSON prints them
    assert sorted(signature["outputs"]) == ["OUTPUT0", "OUTPUT1"]
    assert ok(await rest.get("/v1/models/plus/labels/stable/metadata"))["model_spec"]["version"] == "1"
    assert ok(await rest.get("/v1/models/plus/metadata"))["model_spec"]["version"] == "2"
    classifier = ok(await rest.get("/v1/models/classifier/metadata"))["metadata"]["signature_def"]["signature_def"]
    assert classifier["serving_default"]["method_name"] == "tensorflow/serving/predict"  # as TF2 exports it
    assert classifier["serving_default"]["inputs"]["inputs"]["name"] == "serving_default_inputs:0"


# -- TF Serving's own test models ----------------------------------------------------------
@pytest.mark.anyio
async def test_the_api_rest_md_example_on_half_plus_three(rest):
    """Every call of api_rest.md's example, answered as the document shows."""
    assert ok(await rest.get("/v1/models/saved_model_half_plus_three")) == {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    body = {"instances": [1.0, 2.0, 5.0]}  # shape [3]; the signature gives x no shape at all
    assert ok(await rest.post("/v1/models/saved_model_half_plus_three:predict", json=body)) == {
        "predictions": [3.5, 4.0, 5.5]
    }
    body = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert ok(await rest.post("/v1/models/saved_model_half_plus_three:regress", json=body)) == {"results": [3.5, 4.0]}
    response = await rest.post("/v1/models/half:predict", json={"instances": [1.0, 5.0]})
    assert error(response, 404) == "Servable not found for request: Latest(half)"


TWO = "/v1/models/saved_model_half_plus_two_2_versions"


@pytest.mark.anyio
async def test_predict_as_tf_servings_rest_handler_test_sends_it(rest):
    """http_rest_api_handler_test.cc's Predict: shapes [2,2] and [2] for x declared [-1,1] run."""
    assert ok(await rest.post(f"{TWO}:predict", json={"instances": [[1.0, 2.0], [3.0, 4.0]]})) == {
        "predictions": [[2.5, 3.0], [3.5, 4.0]]
    }
    for path in (f"{TWO}/versions/123:predict", f"{TWO}/labels/Version_Label:predict"):
        assert ok(await rest.post(path, json={"instances": [1.0, 2.0]})) == {"predictions": [2.5, 3.0]}
    body = {"signature_name": "serving_default", "instances": [3.0, 4.0]}
    assert ok(await rest.post(f"{TWO}/versions/123:predict", json=body)) == {"predictions": [3.5, 4.0]}
    body = {"signature_name": "serving_default", "inputs": [3.0, 4.0]}
    assert ok(await rest.post(f"{TWO}/versions/123:predict", json=body)) == {"outputs": [3.5, 4.0]}
    assert "not of expected type: float" in error(await rest.post(f"{TWO}:predict", json={"instances": ["x", "y"]}), 400)
    response = await rest.post(f"{TWO}/labels/Version_Nonexistent:predict", json={"instances": [1.0]})
    assert "Unrecognized servable version label" in error(response, 400)


@pytest.mark.anyio
async def test_regress_and_classify_as_tf_servings_rest_handler_test_sends_them(rest):
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    for path in (TWO, f"{TWO}/versions/123", f"{TWO}/labels/Version_Label"):
        assert ok(await rest.post(f"{path}:regress", json=body)) == {"results": [42]}
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}
    assert ok(await rest.post(f"{TWO}:classify", json=body)) == {"results": [[["", 12]]]}  # scores only: no label
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]}
    assert ok(await rest.post(f"{TWO}/versions/123:classify", json=body)) == {"results": [[["", 7]]]}


@pytest.mark.anyio
async def test_every_signature_of_half_plus_two_is_reachable_by_name(rest):
    examples = {"examples": [{"x": 1.0, "x2": 4.0}, {"x": 2.0, "x2": 6.0}]}
    regress = "/v1/models/half_plus_two:regress"
    assert ok(await rest.post(regress, json={"signature_name": "regress_x_to_y", **examples})) == {"results": [2.5, 3.0]}
    assert ok(await rest.post(regress, json={"signature_name": "regress_x_to_y2", **examples})) == {"results": [3.5, 4.0]}
    classify = "/v1/models/half_plus_two:classify"
    body = {"signature_name": "classify_x_to_y", **examples}
    assert ok(await rest.post(classify, json=body)) == {"results": [[["", 2.5]], [["", 3.0]]]}
    # regress_x2_to_y3 takes the tensor x2 itself: a predict call on it, 0.5 x2 + 3
    body = {"signature_name": "regress_x2_to_y3", "instances": [[4.0], [6.0]]}
    assert ok(await rest.post("/v1/models/half_plus_two:predict", json=body)) == {"predictions": [[5.0], [6.0]]}
    body = {"signature_name": "regress_x2_to_y3", "inputs": {"inputs": [1.0, 2.0, 3.0]}}
    assert ok(await rest.post("/v1/models/half_plus_two:predict", json=body)) == {"outputs": [3.5, 4.0, 4.5]}
    # a context shared by every example
    body = {"signature_name": "regress_x_to_y", "context": {"x2": 1.0}, "examples": [{"x": 4.0}]}
    assert ok(await rest.post(regress, json=body)) == {"results": [4.0]}


@pytest.mark.anyio
async def test_the_metadata_of_tf_servings_test_model_is_tf_servings(rest):
    """The JSON TF Serving's own REST test expects (saved_model_half_plus_two_2_versions_metadata.json):
    all six signatures, graph tensor names, unknown ranks."""
    expected = json.loads((TESTDATA / "saved_model_half_plus_two_2_versions_metadata.json").read_text())
    assert ok(await rest.get(f"{TWO}/versions/123/metadata")) == expected
    half_plus_two = ok(await rest.get("/v1/models/half_plus_two/metadata"))["metadata"]["signature_def"]["signature_def"]
    assert sorted(half_plus_two) == ["classify_x_to_y", "regress_x2_to_y3", "regress_x_to_y", "regress_x_to_y2", "serving_default"]
    assert half_plus_two["classify_x_to_y"]["inputs"]["inputs"] == {
        "name": "tf_example:0",
        "dtype": "DT_STRING",
        "tensor_shape": {"dim": [], "unknown_rank": True},
    }


@pytest.mark.anyio
async def test_requests_a_signature_cannot_take(rest):
    body = {"signature_name": "regress_x2_to_y3", "inputs": {"x": [1.0]}}
    assert error(await rest.post("/v1/models/half_plus_two:predict", json=body), 400) == (
        "Missing named input: inputs in 'inputs' object."
    )
    body = {"signature_name": "classify_x_to_y", "instances": [1.0]}  # serialized tf.Examples: strings
    assert "not of expected type: string" in error(await rest.post("/v1/models/half_plus_two:predict", json=body), 400)
    body = {"signature_name": "classify_x_to_y", "instances": ["not a tf.Example"]}
    message = error(await rest.post("/v1/models/half_plus_two:predict", json=body), 400)
    assert message.startswith("tensorflow refused the input:") and "/work" not in message


# -- errors -------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_unknown_models_and_versions_are_404(rest):
    assert error(await rest.post("/v1/models/nope:predict", json={"instances": [1.0]}), 404) == (
        "Servable not found for request: Latest(nope)"
    )
    assert error(await rest.post("/v1/models/plus/versions/3:predict", json={"instances": [[1.0]]}), 404) == (
        "Servable not found for request: Specific(plus, 3)"
    )
    assert error(await rest.get("/v1/models/nope"), 404) == "Could not find any versions of model nope"
    assert error(await rest.get("/v1/models/plus/versions/7"), 404) == "Could not find version 7 of model plus"
    assert error(await rest.get("/v1/models/nope/metadata"), 404) == "Servable not found for request: Latest(nope)"


@pytest.mark.anyio
async def test_unknown_labels_are_a_client_error(rest):
    for response, label in (
        (await rest.post("/v1/models/plus/labels/nightly:predict", json={"instances": [[1.0]]}), "nightly"),
        (await rest.get("/v1/models/plus/labels/nightly"), "nightly"),
        (await rest.get("/v1/models/simple/labels/stable/metadata"), "stable"),  # Triton models have none
    ):
        assert error(response, 400) == f"Unrecognized servable version label: {label}"


@pytest.mark.anyio
async def test_malformed_json(rest):
    assert error(await rest.post("/v1/models/doubler:predict", content=b'{"instances": [[1.0,'), 400).startswith(
        "JSON Parse error: "
    )
    assert error(await rest.post("/v1/models/doubler:predict", content=b""), 400) == (
        "JSON Parse error: The document is empty"
    )
    assert error(await rest.post("/v1/models/doubler:predict", content=b"[1, 2]"), 400) == (
        "JSON Value: [1,2] Is not object"
    )


@pytest.mark.parametrize(
    "body,message",
    [
        ({}, "Missing 'inputs' or 'instances' key"),
        (
            {"instances": [[1.0, 2.0, 3.0]], "inputs": [[1.0, 2.0, 3.0]]},
            "JSON Value: Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist",
        ),
        ({"instances": [["a", "b", "c"]]}, "input 'x': JSON values of type String are not of expected type: float32"),
        (
            {"instances": [[1.0, 2.0, 3.0], [3.0]]},
            "Failed to process element: 1 of 'instances' list. Error: Expecting shape [3] but got: [1]",
        ),
        ({"instances": [[[1.0], [2.0, 3.0]]]}, "input 'x': nested lists must be dense (every list at one level the same length)"),
        ({"signature_name": "other", "instances": [[1.0, 2.0, 3.0]]}, 'Serving signature key "other" not found.'),
        (
            {"signature_name": 1, "instances": [[1.0, 2.0, 3.0]]},
            "JSON Value: not formatted correctly. 'signature_name' key must be a string value.",
        ),
    ],
)
@pytest.mark.anyio
async def test_requests_the_signature_cannot_take_are_400(rest, body, message):
    assert error(await rest.post("/v1/models/doubler:predict", json=body), 400) == message


@pytest.mark.anyio
async def test_shapes_the_model_cannot_take_are_400(rest):
    message = error(await rest.post("/v1/models/simple:predict", json={"inputs": {"INPUT0": [[1]], "INPUT1": [[1]]}}), 400)
    assert "INPUT0" in message and "16" in message


@pytest.mark.anyio
async def test_a_signature_name_of_serving_default_is_the_default(rest):
    body = {"signature_name": "serving_default", "inputs": [[1.0, 2.0, 3.0]]}
    assert ok(await rest.post("/v1/models/doubler:predict", json=body)) == {"outputs": [[2.0, 4.0, 6.0]]}


@pytest.mark.parametrize("encoding,compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
@pytest.mark.anyio
async def test_compressed_request_bodies(rest, encoding, compress):
    body = compress(json.dumps({"instances": [[1.0, 2.0, 3.0]]}).encode())
    response = await rest.post("/v1/models/doubler:predict", content=body, headers={"content-encoding": encoding})
    assert ok(response) == {"predictions": [[2.0, 4.0, 6.0]]}


@pytest.mark.anyio
async def test_bodies_that_do_not_decompress_are_400(rest):
    message = error(await rest.post("/v1/models/doubler:predict", content=b"{}", headers={"content-encoding": "gzip"}), 400)
    assert message.startswith("failed to decompress the request body as gzip")
    message = error(await rest.post("/v1/models/doubler:predict", content=b"{}", headers={"content-encoding": "br"}), 400)
    assert message == "unsupported Content-Encoding 'br', expected gzip, deflate or identity"


@pytest.mark.anyio
async def test_paths_match_as_tf_serving_matches_them(rest):
    assert ok(await rest.get("/V1/Models/plus/Versions/2"))["model_version_status"][0]["version"] == "2"
    assert ok(await rest.post("/v1/models/dou%62ler:predict", json={"inputs": [[1.0, 1.0, 1.0]]})) == {
        "outputs": [[2.0, 2.0, 2.0]]
    }  # names are URL-decoded after matching
    assert ok(await rest.get("/v1/models/plus?verbose=1"))["model_version_status"][0]["version"] == "1"
    assert error(await rest.get("/v1/models"), 400) == "Missing model name in request."
    assert error(await rest.post("/v1/models/plus:explain", json={}), 400) == "Malformed request: POST /v1/models/plus:explain"
    assert error(await rest.delete("/v1/models/plus"), 400) == "Malformed request: DELETE /v1/models/plus"
    assert error(await rest.get("/v1/models/plus/versions/x"), 400) == "Malformed request: GET /v1/models/plus/versions/x"
    assert error(await rest.get("/v2/models/plus"), 404) == "Not found: GET /v2/models/plus"


def test_the_route_table_has_every_path_shape_of_tf_servings_rest_api():
    """The table dispatch() matches with (and the OpenAPI document is generated from)."""
    routes = TFServingREST(object()).routes  # type: ignore[arg-type]  (building the table reads no model)
    shapes = {(route.method, route.path_format) for route in routes}
    expected = {("GET", "/monitoring/prometheus/metrics")}
    for suffix in ("", "/versions/{version}", "/labels/{label}"):
        model = "/v1/models/{name}" + suffix
        expected |= {("GET", model), ("GET", model + "/metadata")}
        expected |= {("POST", f"{model}:{verb}") for verb in ("predict", "classify", "regress")}
    assert shapes == expected
    versioned = next(r for r in routes if r.path_format == "/v1/models/{name}/versions/{version}/metadata")
    assert type(versioned.param_convertors["version"]).__name__ == "IntegerConvertor"
    assert versioned.parameters("GET", "/V1/MODELS/my%20model/VERSIONS/3/METADATA") == {"name": "my model", "version": 3}
    assert versioned.parameters("POST", "/v1/models/m/versions/3/metadata") is None
    assert versioned.parameters("GET", "/v1/models/m/versions/x/metadata") is None
    labelled = next(r for r in routes if r.path_format == "/v1/models/{name}/labels/{label}:classify")
    assert labelled.parameters("POST", "/v1/models/m/labels/a%2Fb:CLASSIFY") == {"name": "m", "label": "a/b"}
    metrics = routes[0]
    assert metrics.parameters("GET", "/monitoring/prometheus/metrics") == {}
    assert metrics.parameters("GET", "/MONITORING/prometheus/metrics") is None  # an exact path in TF Serving


@pytest.mark.anyio
async def test_dispatch_answers_with_the_route_table(models_conf):
    """A route added to the table is answered: the table is what dispatch() matches with."""
    from starlette.responses import PlainTextResponse

    from triserve.protocols.tfserving.rest import TFRoute

    async with running_dataplane([models_conf(PLUS)]) as dataplane:
        rest = TFServingREST(dataplane)

        async def echo(request, name):
            return PlainTextResponse(f"hello {name}")

        rest.routes.append(TFRoute("/v1/models/{name}:hello", echo, "POST"))
        transport = httpx.ASGITransport(app=rest.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://tfserving") as client:
            assert (await client.post("/v1/models/plus:Hello")).text == "hello plus"
            rest.routes.clear()
            assert error(await client.get("/v1/models/plus"), 400) == "Malformed request: GET /v1/models/plus"
        assert rest.app().routes is rest.routes


# -- metrics ------------------------------------------------------------------------------
def samples(text: str, name: str) -> dict[str, float]:
    """`name{labels} value` lines as {labels: value}."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            found[labels] = float(value)
    return found


@pytest.mark.anyio
async def test_prometheus_metrics_count_requests_per_model_and_latency_per_version(models_conf):
    catalog = models_conf(PLUS)
    async with running_dataplane([catalog]) as dataplane, rest_client(dataplane) as client:
        for path in ("/v1/models/plus/versions/1:predict", "/v1/models/plus:predict", "/v1/models/plus:predict"):
            ok(await client.post(path, json={"instances": [[1.0], [2.0]]}))
        response = await client.get("/monitoring/prometheus/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert samples(response.text, ":tensorflow:serving:request_count") == {
            '{model_name="plus",status="OK"}': 3.0,  # both versions together, as TF Serving counts
            '{model_name="plus",status="ERROR"}': 0.0,
        }
        assert samples(response.text, ":tensorflow:serving:request_latency_count") == {
            '{API="predict",model_name="plus",version="1"}': 1.0,
            '{API="predict",model_name="plus",version="2"}': 2.0,
        }
        buckets = samples(response.text, ":tensorflow:serving:request_latency_bucket")
        assert buckets['{API="predict",le="+Inf",model_name="plus",version="2"}'] == 2.0
        runs = samples(response.text, ":tensorflow:core:graph_runs")
        assert runs['{model_name="plus",version="1"}'] >= 1  # the batcher may run requests together
        assert error(await client.post("/monitoring/prometheus/metrics"), 404) == (
            "Not found: POST /monitoring/prometheus/metrics"
        )


def test_the_request_log_names_the_model_a_path_names():
    assert model_of({"raw_path": b"/v1/models/plus/versions/2:predict"}) == "plus"
    assert model_of({"raw_path": b"/v1/models/my%20model/labels/stable/metadata"}) == "my model"
    assert model_of({"raw_path": b"/monitoring/prometheus/metrics"}) == ""


@pytest.mark.anyio
async def test_one_b64_value_per_instance_feeds_a_config_input_of_dims_one(tmp_path):
    """{"instances": [{"b64": ...}]}: one encoded value per row for a Triton input of dims [1]
    (an ensemble taking one image per row) becomes its [N, 1] tensor."""
    from tests.inprocess import string_identity_onnx

    string_identity_onnx(tmp_path / "one_string" / "1" / "model.onnx")
    (tmp_path / "one_string" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx" max_batch_size: 8'
        ' input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 1 ] } ]'
        ' output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 1 ] } ]')
    async with running_dataplane([TritonRepositories([tmp_path])]) as dataplane:
        async with rest_client(dataplane) as client:
            values = [b"first", b"second"]
            body = {"instances": [{"b64": base64.b64encode(v).decode()} for v in values]}
            answer = ok(await client.post("/v1/models/one_string:predict", json=body))
            assert answer["predictions"] == [["first"], ["second"]]
            # without the fit the same rows were [2] against [-1, 1]; a nested row still works as before
            nested = {"instances": [[{"b64": base64.b64encode(v).decode()}] for v in values]}
            assert ok(await client.post("/v1/models/one_string:predict", json=nested))["predictions"] == [["first"], ["second"]]


@pytest.mark.anyio
async def test_a_large_body_is_read_by_the_signature_it_names(rest):
    """Bodies above processes.LARGE are decoded in a worker process: by the named signature's inputs."""
    from triserve.protocols.transport import processes

    values = [float(i % 7) for i in range(300_000)]
    body = json.dumps({"signature_name": "regress_x2_to_y3", "inputs": {"inputs": values}}).encode()
    assert len(body) > processes.LARGE
    outputs = ok(await rest.post("/v1/models/half_plus_two:predict", content=body))["outputs"]
    assert len(outputs) == len(values) and outputs[:8] == [0.5 * v + 3 for v in values[:8]]
    body = json.dumps({"instances": values}).encode()  # serving_default, x of shape [200000]
    predictions = ok(await rest.post("/v1/models/half_plus_two:predict", content=body))["predictions"]
    assert predictions[:3] == [2.0, 2.5, 3.0]
