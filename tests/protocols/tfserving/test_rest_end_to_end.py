"""TF Serving REST API against a real server: models.conf models (versions, labels, policies),
the ONNX example from a Triton repository, real predictions, and TF Serving's errors."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import CAT_CLASSES, pixels_nchw

pytestmark = pytest.mark.slow  # a real server subprocess and the exported example models


@pytest.fixture(scope="module")
def rest(tfserving_server):
    with httpx.Client(base_url=f"http://127.0.0.1:{tfserving_server.ports['tfserving_rest']}", timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def chelsea_nhwc() -> list:
    return pixels_nchw("chelsea").transpose(1, 2, 0).tolist()


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and body["error"]
    return body["error"]


def top_class(probabilities) -> int:
    return int(np.argmax(np.asarray(probabilities)))


# -- status and metadata ------------------------------------------------------------------
def test_status_lists_the_policy_versions(rest):
    body = ok(rest.get("/v1/models/effnet"))
    assert body == {
        "model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in (1, 2)  # version 3 is on disk, but the specific policy names 1 and 2
        ]
    }


def test_status_by_version_and_label(rest):
    assert [s["version"] for s in ok(rest.get("/v1/models/effnet/versions/1"))["model_version_status"]] == ["1"]
    assert [s["version"] for s in ok(rest.get("/v1/models/effnet/labels/canary"))["model_version_status"]] == ["2"]
    assert [s["version"] for s in ok(rest.get("/v1/models/effnet/labels/stable"))["model_version_status"]] == ["1"]


def test_latest_policy_serves_the_highest_version(rest):
    rows = ok(rest.get("/v1/models/effnet_latest"))["model_version_status"]
    assert [(r["version"], r["state"]) for r in rows] == [("3", "AVAILABLE")]


def test_paths_are_case_insensitive(rest):
    assert ok(rest.get("/V1/Models/effnet/Versions/2"))["model_version_status"][0]["version"] == "2"


def test_metadata_nests_the_signature_def_map_as_tf_serving(rest):
    body = ok(rest.get("/v1/models/effnet/labels/stable/metadata"))
    assert body["model_spec"] == {"name": "effnet", "version": "1", "signature_name": ""}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["input"]["dtype"] == "DT_FLOAT"
    dims = signature["inputs"]["input"]["tensor_shape"]["dim"]
    assert [d["size"] for d in dims] == ["-1", "224", "224", "3"]  # int64 as strings, proto3 JSON
    assert signature["outputs"]["output"]["tensor_shape"]["dim"][1]["size"] == "1000"
    assert ok(rest.get("/v1/models/effnet/metadata"))["model_spec"]["version"] == "2"  # latest


def test_triton_model_appears_with_its_inputs_and_outputs_as_the_signature(rest):
    body = ok(rest.get("/v1/models/efficientnet_lite0_onnx/metadata"))
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [d["size"] for d in signature["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "3", "224", "224"]
    assert list(signature["outputs"]) == ["output"]
    assert ok(rest.get("/v1/models/efficientnet_lite0_onnx"))["model_version_status"][0]["state"] == "AVAILABLE"


# -- predict ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/v1/models/effnet:predict", "/v1/models/effnet/versions/1:predict", "/v1/models/effnet/labels/canary:predict"]
)
def test_predict_row_format_knows_chelsea_is_a_cat(rest, chelsea_nhwc, path):
    body = ok(rest.post(path, json={"instances": [chelsea_nhwc]}))
    (prediction,) = body["predictions"]  # one output: no name, one entry per instance
    assert len(prediction) == 1000
    assert top_class(prediction) in CAT_CLASSES
    assert abs(sum(prediction) - 1) < 1e-3


def test_predict_row_format_with_named_instances_and_a_batch(rest, chelsea_nhwc):
    body = ok(rest.post("/v1/models/effnet_latest:predict", json={"instances": [{"input": chelsea_nhwc}] * 2}))
    assert [top_class(p) in CAT_CLASSES for p in body["predictions"]] == [True, True]


def test_predict_columnar_named_and_unnamed(rest, chelsea_nhwc):
    named = ok(rest.post("/v1/models/effnet/labels/stable:predict", json={"inputs": {"input": [chelsea_nhwc]}}))
    unnamed = ok(
        rest.post("/v1/models/effnet:predict", json={"signature_name": "serving_default", "inputs": [chelsea_nhwc]})
    )
    for body in (named, unnamed):
        assert list(body) == ["outputs"]
        assert np.asarray(body["outputs"]).shape == (1, 1000)
        assert top_class(body["outputs"][0]) in CAT_CLASSES
    np.testing.assert_allclose(named["outputs"], unnamed["outputs"], atol=1e-5)


def test_predict_on_the_triton_onnx_model(rest):
    body = ok(rest.post("/v1/models/efficientnet_lite0_onnx:predict", json={"instances": [pixels_nchw("chelsea").tolist()]}))
    assert top_class(body["predictions"][0]) in CAT_CLASSES


def test_models_conf_savedmodel_is_on_the_v2_api_too(tfserving_server):
    client = httpclient.InferenceServerClient(tfserving_server.url)
    image = pixels_nchw("chelsea").transpose(1, 2, 0)[None].copy()
    infer_input = httpclient.InferInput("input", list(image.shape), "FP32")
    infer_input.set_data_from_numpy(image, binary_data=True)
    result = client.infer("effnet", [infer_input], model_version="1")
    assert top_class(result.as_numpy("output")[0]) in CAT_CLASSES
    assert client.get_model_metadata("effnet")["versions"] == ["1", "2"]


def test_strings_b64_and_bytes_outputs(rest):
    body = ok(rest.post("/v1/models/strings:predict", json={"instances": [["abc"], [{"b64": base64.b64encode(b"\xff\x00x").decode()}]]}))
    first, second = body["predictions"]
    assert first == {"length": [3], "upper": ["ABC"], "echo_bytes": [{"b64": base64.b64encode(b"abc").decode()}]}
    assert second["length"] == [3]
    assert base64.b64decode(second["echo_bytes"][0]["b64"]) == b"\xff\x00x"  # _bytes outputs come back as b64
    columnar = ok(rest.post("/v1/models/strings:predict", json={"inputs": {"text": [["a"], ["bb"]]}}))
    assert columnar["outputs"]["length"] == [[1], [2]]


def test_batches_above_max_batch_size_are_answered_in_order(rest, tfserving_server):
    client = httpclient.InferenceServerClient(tfserving_server.url)
    max_batch_size = client.get_model_config("strings")["max_batch_size"]
    words = ["w" * n for n in range(1, 2 * max_batch_size + 2)]  # TF Serving has no batch limit
    body = ok(rest.post("/v1/models/strings:predict", json={"instances": [[w] for w in words]}))
    assert [p["length"] for p in body["predictions"]] == [[len(w)] for w in words]


def test_nan_and_infinity_tokens_go_both_ways(rest):
    image = np.zeros((224, 224, 3), np.float32).tolist()
    image[0][0][0] = float("nan")
    text = json.dumps({"instances": [image]})  # Python writes the NaN token, which TF Serving accepts
    assert "NaN" in text
    assert len(ok(rest.post("/v1/models/effnet:predict", content=text))["predictions"][0]) == 1000
    response = rest.post("/v1/models/regressor:regress", content=b'{"examples": [{"x": NaN}, {"x": Infinity}, {"x": -Infinity}]}')
    assert response.status_code == 200, response.text
    assert response.text.replace(" ", "") == '{"results":[NaN,Infinity,-Infinity]}'


def test_whole_floats_keep_a_decimal_point(rest):
    response = rest.post("/v1/models/regressor:regress", json={"examples": [{"x": 1.5}]})
    assert response.text.replace(" ", "") == '{"results":[4.0]}'


# -- classify and regress -----------------------------------------------------------------
def test_classify_with_context(rest):
    body = ok(rest.post("/v1/models/classifier:classify", json={"context": {"x": 0.0}, "examples": [{"x": 2.0}, {}]}))
    first, second = body["results"]
    assert [label for label, _ in first] == ["pos", "neg"]
    assert first[0][1] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-5)
    assert second[0][1] == pytest.approx(0.5)  # the context's x


def test_regress(rest):
    assert ok(rest.post("/v1/models/regressor:regress", json={"examples": [{"x": 1.0}, {"x": [2.0]}]})) == {
        "results": [3.0, 5.0]
    }


def test_classify_on_a_predict_signature_is_a_clear_error(rest):
    message = error(rest.post("/v1/models/effnet:classify", json={"examples": [{"x": 1.0}]}), 400)
    assert message == "No classification inputs found in SignatureDef: inputs {input}, outputs {output}"
    assert error(rest.post("/v1/models/classifier:regress", json={"examples": [{"x": 1.0}]}), 400) == "Expected one output Tensor."
    assert "examples" in error(rest.post("/v1/models/classifier:classify", json={"instances": [1]}), 400)


# -- errors -------------------------------------------------------------------------------
def test_instances_and_inputs_together(rest):
    assert "only one of 'inputs' or 'instances'" in error(
        rest.post("/v1/models/effnet:predict", json={"instances": [[1.0]], "inputs": [[1.0]]}), 400
    )


def test_ragged_instances(rest):
    assert "Expecting shape" in error(rest.post("/v1/models/effnet:predict", json={"instances": [[1.0, 2.0], [3.0]]}), 400)
    assert "dense" in error(rest.post("/v1/models/effnet:predict", json={"instances": [[[1.0], [2.0, 3.0]]]}), 400)


def test_malformed_json(rest):
    assert "JSON Parse error" in error(rest.post("/v1/models/effnet:predict", content=b'{"instances": [[1.0,'), 400)
    assert "JSON Parse error" in error(rest.post("/v1/models/effnet:predict", content=b""), 400)
    error(rest.post("/v1/models/effnet:predict", content=b"[1, 2]"), 400)


def test_missing_key_wrong_type_bad_signature(rest):
    assert "Missing 'inputs' or 'instances' key" in error(rest.post("/v1/models/effnet:predict", json={}), 400)
    assert "not of expected type" in error(rest.post("/v1/models/effnet:predict", json={"instances": ["a"]}), 400)
    assert "signature" in error(rest.post("/v1/models/effnet:predict", json={"signature_name": "x", "instances": [1.0]}), 400)
    assert "signature_name" in error(rest.post("/v1/models/effnet:predict", json={"signature_name": 1, "instances": [1.0]}), 400)


def test_unknown_model_and_version_are_404(rest):
    assert error(rest.post("/v1/models/nope:predict", json={"instances": [1.0]}), 404) == (
        "Servable not found for request: Latest(nope)"
    )
    assert error(rest.post("/v1/models/effnet/versions/3:predict", json={"instances": [1.0]}), 404) == (
        "Servable not found for request: Specific(effnet, 3)"
    )
    assert "Could not find any versions of model nope" == error(rest.get("/v1/models/nope"), 404)
    assert "Could not find version 7 of model effnet" == error(rest.get("/v1/models/effnet/versions/7"), 404)
    error(rest.get("/v1/models/nope/metadata"), 404)


def test_unknown_label_is_a_client_error(rest):
    for response, label in (
        (rest.post("/v1/models/effnet/labels/nightly:predict", json={"instances": [1.0]}), "nightly"),
        (rest.get("/v1/models/effnet/labels/nightly"), "nightly"),
        (rest.get("/v1/models/efficientnet_lite0_onnx/labels/stable/metadata"), "stable"),  # Triton models have none
    ):
        assert error(response, 400) == f"Unrecognized servable version label: {label}"


def test_malformed_paths(rest):
    assert error(rest.get("/v1/models"), 400) == "Missing model name in request."
    assert error(rest.post("/v1/models/effnet:explain", json={}), 400).startswith("Malformed request: POST")
    assert error(rest.delete("/v1/models/effnet"), 400).startswith("Malformed request: DELETE")
    error(rest.get("/v2/models/effnet"), 404)


def test_prometheus_metrics(rest, chelsea_nhwc):
    ok(rest.post("/v1/models/effnet_latest:predict", json={"instances": [chelsea_nhwc]}))
    response = rest.get("/monitoring/prometheus/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    count = [line for line in lines if line.startswith(':tensorflow:serving:request_count{model_name="effnet_latest",status="OK"}')]
    assert count and float(count[0].split()[-1]) >= 1
    assert any(line.startswith(":tensorflow:serving:request_latency_bucket{") for line in lines)


# -- api_rest.md, call by call, against TF Serving's own test models -------------------------
def test_every_api_rest_md_call_answers_as_the_document_shows(testdata_server):
    """The document's `curl -d` calls (a form content type, as curl sends it) on half_plus_three,
    and its status, metadata, classify and regress calls on the other test models."""
    curl = {"content-type": "application/x-www-form-urlencoded"}
    with httpx.Client(base_url=f"http://127.0.0.1:{testdata_server.ports['tfserving_rest']}", timeout=120) as client:
        assert ok(client.get("/v1/models/saved_model_half_plus_three")) == {
            "model_version_status": [
                {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }
        response = client.post("/v1/models/saved_model_half_plus_three:predict", content=b'{"instances": [1.0,2.0,5.0]}', headers=curl)
        assert ok(response) == {"predictions": [3.5, 4.0, 5.5]}
        body = b'{"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}'
        response = client.post("/v1/models/saved_model_half_plus_three:regress", content=body, headers=curl)
        assert ok(response) == {"results": [3.5, 4.0]}
        response = client.post("/v1/models/half:predict", content=b'{"instances": [1.0,5.0]}', headers=curl)
        assert response.status_code == 404 and response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "Servable not found for request: Latest(half)"}
        # the other URL forms of the document: versions, metadata, :classify
        assert ok(client.get("/v1/models/saved_model_half_plus_two_2_versions/versions/124"))["model_version_status"][0]["version"] == "124"
        metadata = ok(client.get("/v1/models/saved_model_half_plus_two_2_versions/metadata"))
        assert metadata["model_spec"] == {"name": "saved_model_half_plus_two_2_versions", "signature_name": "", "version": "124"}
        assert len(metadata["metadata"]["signature_def"]["signature_def"]) == 6
        body = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}
        assert ok(client.post("/v1/models/half_plus_two:classify", json=body)) == {"results": [[["", 12]]]}
        body = {"signature_name": "regress_x_to_y", "context": {"x2": 1.0}, "examples": [{"x": 80.0}]}
        assert ok(client.post("/v1/models/half_plus_two/versions/123:regress", json=body)) == {"results": [42]}
