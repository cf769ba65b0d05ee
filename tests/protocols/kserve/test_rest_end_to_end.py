"""The PyPI tritonclient.http (not our code) against a real `triserve serve` over a socket."""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import CAT_CLASSES, ESPRESSO, pixels_nchw

pytestmark = pytest.mark.slow  # a `triserve serve` subprocess with the example models

MODEL = "efficientnet_lite0_onnx"


@pytest.fixture(scope="module")
def client(example_server):
    with httpclient.InferenceServerClient(example_server.url) as c:
        yield c


@pytest.fixture(scope="module")
def raw_session(example_repo):
    return ort.InferenceSession(str(example_repo / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def infer(client, batch: np.ndarray, binary: bool = True, **kwargs):
    inp = httpclient.InferInput("input", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=binary)
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    return client.infer(MODEL, [inp], outputs=[out], **kwargs)


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "triserve"
    assert {"binary_tensor_data", "classification", "statistics", "model_configuration"} <= set(meta["extensions"])


def test_model_metadata_has_batch_dimension(client):
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    meta = client.get_model_metadata(MODEL)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 1000]}]


def test_model_config_renders_like_triton(client):
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] == 8
    assert config["input"][0]["format"] == "FORMAT_NCHW"
    assert config["input"][0]["dims"] == [3, 224, 224]  # numbers, not protobuf-JSON strings
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert "dynamic_batching" in config


def test_real_predictions_match_onnxruntime(client, raw_session):
    for name, expected in (("chelsea", CAT_CLASSES), ("coffee", {ESPRESSO})):
        x = pixels_nchw(name)[None]
        served = infer(client, x).as_numpy("output")
        assert int(served[0].argmax()) in expected
        (raw,) = raw_session.run(["output"], {"input": x})
        np.testing.assert_allclose(served, raw, atol=1e-4)


def test_json_tensors_give_the_same_answer(client):
    x = pixels_nchw("coffee")[None]
    binary = infer(client, x).as_numpy("output")
    as_json = infer(client, x, binary=False).as_numpy("output")
    np.testing.assert_allclose(as_json, binary, atol=1e-6)


def test_batch_of_two_photos_answers_in_order(client):
    batch = np.stack([pixels_nchw("chelsea"), pixels_nchw("coffee")])
    out = infer(client, batch).as_numpy("output")
    assert out.shape == (2, 1000)
    assert int(out[0].argmax()) in CAT_CLASSES
    assert int(out[1].argmax()) == ESPRESSO


def test_classification_extension(client):
    batch = np.stack([pixels_nchw("chelsea"), pixels_nchw("coffee")])
    inp = httpclient.InferInput("input", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    out = httpclient.InferRequestedOutput("output", class_count=3)
    result = client.infer(MODEL, [inp], outputs=[out], request_id="7")
    assert result.get_response()["id"] == "7"
    classes = result.as_numpy("output")
    assert classes.shape == (2, 3)
    value, index, label = classes[1][0].decode().split(":")
    assert (int(index), label) == (ESPRESSO, "espresso")
    assert len(value.split(".")[1]) == 6  # printf %f, as Triton
    assert int(classes[0][0].decode().split(":")[1]) in CAT_CLASSES


def test_gzip_both_ways(client):
    x = pixels_nchw("chelsea")[None]
    plain = infer(client, x).as_numpy("output")
    for algorithm in ("gzip", "deflate"):
        packed = infer(
            client, x, request_compression_algorithm=algorithm, response_compression_algorithm=algorithm
        ).as_numpy("output")
        np.testing.assert_array_equal(packed, plain)


def test_statistics_count_inferences(client):
    before = client.get_inference_statistics(MODEL)["model_stats"][0]
    infer(client, np.stack([pixels_nchw("chelsea")] * 3))
    after = client.get_inference_statistics(MODEL)["model_stats"][0]
    assert after["name"] == MODEL and after["version"] == "1"
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    assert any(b["batch_size"] == 3 for b in after["batch_stats"])
    all_models = client.get_inference_statistics()["model_stats"]
    # the example repository also holds the TorchScript, SavedModel and OpenVINO variants and the
    # JPEG ensemble with its Python preprocessing step
    assert sorted(s["name"] for s in all_models) == sorted([
        MODEL, "efficientnet_lite0_tf", "efficientnet_lite0_torch", "efficientnet_lite0_openvino",
        "efficientnet_lite0_jpeg", "preprocess",
    ])


# -- bad input: a clear JSON error with Triton's status code, while good requests keep working --

def _header(inputs, outputs=None) -> bytes:
    body = {"inputs": inputs}
    if outputs is not None:
        body["outputs"] = outputs
    return json.dumps(body).encode()


def _binary_request(shape, data: bytes, datatype="FP32"):
    header = _header([{"name": "input", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": len(data)}}])
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


GOOD = np.zeros((1, 3, 224, 224), np.float32)


def _bad_requests():
    url = f"/v2/models/{MODEL}/infer"
    body, headers = _binary_request([1, 3, 224, 224], GOOD.tobytes())
    yield "unknown model", "/v2/models/nope/infer", body, headers, 404, "unknown model"
    wrong_shape = np.zeros((1, 3, 200, 200), np.float32)
    yield "wrong shape", url, *_binary_request([1, 3, 200, 200], wrong_shape.tobytes()), 400, "unexpected shape"
    yield "wrong datatype", url, *_binary_request([1, 3, 224, 224], GOOD.astype(np.float64).tobytes(), "FP64"), 400, "data-type"
    yield "element count mismatch", url, *_binary_request([1, 3, 224, 224], GOOD.tobytes()[:-4]), 400, "unexpected size"
    big = np.zeros((9, 3, 224, 224), np.float32)
    yield "batch above max_batch_size", url, *_binary_request([9, 3, 224, 224], big.tobytes()), 400, "batch-size must be <= 8"
    yield "malformed JSON", url, b'{"inputs": [', {}, 400, "JSON"
    truncated, headers = _binary_request([1, 3, 224, 224], GOOD.tobytes())
    yield "truncated binary body", url, truncated[:-1000], headers, 400, "binary"
    yield "header length beyond body", url, body, {"Inference-Header-Content-Length": str(len(body) + 10)}, 400, "Inference-Header-Content-Length"
    yield "corrupt gzip", url, b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400, "decompress"
    json_count = _header([{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}])
    yield "JSON element count mismatch", url, json_count, {}, 400, "number of elements"


@pytest.mark.parametrize("case", list(_bad_requests()), ids=lambda c: c[0])
def test_bad_input_gets_a_clear_error_while_good_requests_succeed(example_server, client, case):
    _, path, body, headers, status, words = case
    good_results = []
    stop = threading.Event()

    def good_traffic():
        with httpclient.InferenceServerClient(example_server.url) as c:
            while not stop.is_set():
                good_results.append(int(infer(c, pixels_nchw("coffee")[None]).as_numpy("output")[0].argmax()))

    worker = threading.Thread(target=good_traffic)
    worker.start()
    try:
        response = httpx.post(f"http://{example_server.url}{path}", content=body, headers=headers, timeout=30)
    finally:
        stop.set()
        worker.join()
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words.lower() in response.json()["error"].lower()
    assert good_results and set(good_results) == {ESPRESSO}
    assert client.is_server_ready()


def test_unknown_url_and_method(example_server):
    base = f"http://{example_server.url}"
    r = httpx.get(f"{base}/v2/nothing/here")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = httpx.get(f"{base}/v2/models/{MODEL}/infer")
    assert r.status_code == 405 and "error" in r.json()


def test_a_version_the_model_never_had_is_not_found(client):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata(MODEL, "42")
    assert e.value.status() == "404" and f"Request for unknown model: '{MODEL}' version 42 is not found" in str(e.value)
