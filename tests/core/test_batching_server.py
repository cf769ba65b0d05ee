"""Dynamic batching, queue limits, warmup and metrics on a real server with the real model."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import pixels_nchw

# Slow tier: a server of the exported example model in a subprocess.
pytestmark = pytest.mark.slow

BASE = "efficientnet_lite0_onnx"
IO = """
input [ { name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" } ]
"""
CONFIGS = {
    "batched": "max_batch_size: 8\ndynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 20000 }\n"
               "instance_group [ { count: 1 kind: KIND_CPU } ]",
    "small_queue": "max_batch_size: 1\ndynamic_batching { default_queue_policy { max_queue_size: 1 } }\n"
                   "instance_group [ { count: 1 kind: KIND_CPU } ]",
    "warmed": "max_batch_size: 8\nmodel_warmup [ { name: \"zeros\" batch_size: 2 count: 2\n"
              "  inputs { key: \"input\" value: { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true } } } ]",
}


@pytest.fixture(scope="module")
def server(start_server, example_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("batching")
    for name, text in CONFIGS.items():
        folder = repo / name
        shutil.copytree(example_repo / BASE, folder)
        (folder / "config.pbtxt").write_text(f'name: "{name}"\n{text}\n{IO}')
    return start_server("--model-repository", repo, frontends=("http", "metrics"))


@pytest.fixture(scope="module")
def raw(example_repo):
    return ort.InferenceSession(str(example_repo / BASE / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def distinct_inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    photos = [pixels_nchw(p) for p in ("chelsea", "coffee", "astronaut", "rocket")]
    return [np.clip(photos[i % 4] + rng.normal(0, 20, photos[0].shape), 0, 255).astype(np.float32) for i in range(n)]


def infer(url: str, model: str, x: np.ndarray) -> np.ndarray:
    with httpclient.InferenceServerClient(url) as c:
        inp = httpclient.InferInput("input", [1, *x.shape], "FP32")
        inp.set_data_from_numpy(x[None])
        return c.infer(model, [inp]).as_numpy("output")[0]


def stats(url: str, model: str) -> dict:
    with httpclient.InferenceServerClient(url) as c:
        return c.get_inference_statistics(model)["model_stats"][0]


def test_sixteen_concurrent_clients_each_get_their_own_answer(server, raw):
    inputs = distinct_inputs(16)
    before = stats(server.url, "batched")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda x: infer(server.url, "batched", x), inputs))
    for x, answer in zip(inputs, answers):
        (expected,) = raw.run(["output"], {"input": x[None]})
        np.testing.assert_allclose(answer, expected[0], atol=1e-4)
    after = stats(server.url, "batched")
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 16
    assert executions < inferences  # batches were formed
    assert any(b["batch_size"] > 1 for b in after["batch_stats"])


def test_overload_gets_503_json_errors_and_no_wrong_answers(server, raw):
    x = pixels_nchw("coffee")
    (expected,) = raw.run(["output"], {"input": x[None]})
    body_ok, errors = [], []

    def client():
        with httpclient.InferenceServerClient(server.url) as c:
            for _ in range(4):
                inp = httpclient.InferInput("input", [1, *x.shape], "FP32")
                inp.set_data_from_numpy(x[None])
                try:
                    body_ok.append(c.infer("small_queue", [inp]).as_numpy("output")[0])
                except InferenceServerException as e:
                    errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors, "8 clients against a queue of 1 must overflow"
    assert all(e.status() == "503" and "exceeds maximum queue size" in e.message() for e in errors)
    for answer in body_ok:
        np.testing.assert_allclose(answer, expected[0], atol=1e-4)
    with httpclient.InferenceServerClient(server.url) as c:
        assert c.is_model_ready("small_queue") and c.is_server_ready()
    assert stats(server.url, "small_queue")["inference_stats"]["fail"]["count"] == len(errors)


def test_warmup_ran_before_ready(server):
    assert "warmup 'zeros' ran on 2 instance(s)" in server.log()
    assert server.log().index("warmup 'zeros'") < server.log().index("triserve ready")


def test_prometheus_metrics_have_tritons_names_and_labels(server):
    infer(server.url, "warmed", pixels_nchw("chelsea"))
    text = httpx.get(f"http://127.0.0.1:{server.ports['metrics']}/metrics").text
    assert "# HELP nv_inference_request_success Number of successful inference requests, all batch sizes" in text
    assert "# TYPE nv_inference_request_success counter" in text
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert lines['nv_inference_request_success{model="warmed",version="1"}'] >= 1
    assert lines['nv_inference_count{model="warmed",version="1"}'] >= 1
    for name in ("nv_inference_exec_count", "nv_inference_request_failure", "nv_inference_request_duration_us",
                 "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
                 "nv_inference_pending_request_count"):
        assert f'{name}{{model="warmed",version="1"}}' in lines, name
    assert lines['nv_inference_request_duration_histogram_us_count{model="warmed",version="1"}'] >= 1
    assert 0 <= lines["nv_cpu_utilization"] <= 1
    assert lines["nv_cpu_memory_total_bytes"] >= lines["nv_cpu_memory_used_bytes"] > 0
