"""The PyPI tritonclient.grpc (sync and aio, not our code) against a real `triserve serve`."""

from __future__ import annotations

import ast
import asyncio
import json
import queue
import signal
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import CAT_CLASSES, ESPRESSO, photo, pixels_nchw

pytestmark = pytest.mark.slow  # a `triserve serve` subprocess with the example models

MODEL = "efficientnet_lite0_onnx"
MAX_MESSAGE = 16 * 1024 * 1024  # set low so the oversized request stays cheap; a batch of 8 (4.8 MB) fits


@pytest.fixture(scope="module")
def server(start_server, example_repo):
    return start_server(
        "--model-repository", example_repo, "--grpc-max-message-bytes", MAX_MESSAGE, frontends=("http", "grpc")
    )


@pytest.fixture(scope="module")
def grpc_url(server):
    return f"127.0.0.1:{server.ports['grpc']}"


@pytest.fixture(scope="module")
def client(grpc_url):
    with grpcclient.InferenceServerClient(grpc_url) as c:
        yield c


def _input(batch: np.ndarray, module=grpcclient):
    inp = module.InferInput("input", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    return inp


def infer(client, batch: np.ndarray, **kwargs):
    return client.infer(MODEL, [_input(batch)], outputs=[grpcclient.InferRequestedOutput("output")], **kwargs)


def _error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "triserve"
    assert {"classification", "statistics", "model_configuration", "model_repository"} <= set(meta["extensions"])


def test_model_ready(client):
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "42")
    assert not client.is_model_ready("nope")


def test_model_metadata_has_batch_dimension(client):
    meta = client.get_model_metadata(MODEL)
    assert (meta.name, meta.platform, list(meta.versions)) == (MODEL, "onnxruntime_onnx", ["1"])
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 3, 224, 224])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("output", "FP32", [-1, 1000])]


def test_model_config_is_the_completed_config(client, server):
    config = client.get_model_config(MODEL).config
    assert config.max_batch_size == 8
    assert config.platform == "onnxruntime_onnx"
    assert list(config.input[0].dims) == [3, 224, 224]
    assert config.input[0].format == config.input[0].FORMAT_NCHW
    assert config.output[0].label_filename == "labels.txt"
    assert config.instance_group[0].count >= 1
    assert config.HasField("dynamic_batching")
    with httpclient.InferenceServerClient(server.url) as http:
        as_http = http.get_model_config(MODEL)
    assert as_http["max_batch_size"] == config.max_batch_size
    assert as_http["instance_group"][0]["count"] == config.instance_group[0].count


def test_predictions_equal_the_http_answer(client, server):
    with httpclient.InferenceServerClient(server.url) as http:
        for name, expected in (("chelsea", CAT_CLASSES), ("coffee", {ESPRESSO})):
            x = pixels_nchw(name)[None]
            result = infer(client, x, request_id=f"req-{name}")
            assert result.get_response().id == f"req-{name}"
            assert result.get_response().model_version == "1"
            served = result.as_numpy("output")
            assert served.shape == (1, 1000) and int(served[0].argmax()) in expected
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            over_http = http.infer(MODEL, [inp]).as_numpy("output")
            np.testing.assert_allclose(served, over_http, atol=1e-6)


def test_compressed_calls(client):
    x = pixels_nchw("chelsea")[None]
    plain = infer(client, x).as_numpy("output")
    for algorithm in ("gzip", "deflate"):
        np.testing.assert_array_equal(infer(client, x, compression_algorithm=algorithm).as_numpy("output"), plain)


def test_typed_contents_give_the_same_answer(grpc_url, client):
    x = pixels_nchw("coffee")[None]
    raw = infer(client, x).as_numpy("output")
    request = pb.ModelInferRequest(model_name=MODEL, id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert response.id == "typed" and response.outputs[0].name == "output"
    assert list(response.outputs[0].shape) == [1, 1000]
    typed = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 1000)
    np.testing.assert_allclose(typed, raw, atol=1e-6)


def test_classification_extension(client):
    batch = np.stack([pixels_nchw("chelsea"), pixels_nchw("coffee")])
    out = grpcclient.InferRequestedOutput("output", class_count=3)
    result = client.infer(MODEL, [_input(batch)], outputs=[out], request_id="7")
    assert result.get_response().id == "7"
    assert result.get_output("output").datatype == "BYTES"
    classes = result.as_numpy("output")
    assert classes.shape == (2, 3)
    value, index, label = classes[1][0].decode().split(":")
    assert (int(index), label) == (ESPRESSO, "espresso")
    assert len(value.split(".")[1]) == 6  # printf %f, as Triton
    assert int(classes[0][0].decode().split(":")[1]) in CAT_CLASSES


def test_batch_of_eight(client):
    photos = [pixels_nchw("chelsea"), pixels_nchw("coffee")] * 4
    batch = np.stack(photos)
    assert batch.nbytes > 4 * 1024 * 1024  # above gRPC's default 4 MiB limit
    out = infer(client, batch).as_numpy("output")
    assert out.shape == (8, 1000)
    tops = [int(row.argmax()) for row in out]
    assert all(t in CAT_CLASSES for t in tops[0::2])
    assert tops[1::2] == [ESPRESSO] * 4


def test_statistics_count_inferences(client, server):
    before = client.get_inference_statistics(MODEL).model_stats[0]
    infer(client, np.stack([pixels_nchw("chelsea")] * 3))
    after = client.get_inference_statistics(MODEL, "1").model_stats[0]
    assert (after.name, after.version) == (MODEL, "1")
    assert after.inference_count == before.inference_count + 3
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert any(b.batch_size == 3 for b in after.batch_stats)
    every = [s.name for s in client.get_inference_statistics().model_stats]
    ready = [m["name"] for m in client.get_model_repository_index(as_json=True)["models"] if m["state"] == "READY"]
    assert MODEL in every and sorted(every) == sorted(ready)
    # The same numbers the HTTP statistics give.
    with httpclient.InferenceServerClient(server.url) as http:
        over_http = http.get_inference_statistics(MODEL)["model_stats"][0]
    assert over_http["inference_count"] == after.inference_count
    assert over_http["inference_stats"]["success"]["ns"] == after.inference_stats.success.ns


def test_stream_answers_every_request_with_its_id(grpc_url):
    answers: queue.Queue = queue.Queue()
    names = ["chelsea", "coffee"] * 3
    with grpcclient.InferenceServerClient(grpc_url) as c:
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i, name in enumerate(names):
            c.async_stream_infer(MODEL, [_input(pixels_nchw(name)[None])], request_id=f"s{i}")
        c.async_stream_infer("nope", [_input(pixels_nchw("coffee")[None])], request_id="bad")
        got = [answers.get(timeout=60) for _ in range(len(names) + 1)]
        c.stop_stream()
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1 and "unknown model" in errors[0].message()
    by_id = {r.get_response().id: r for r, e in got if e is None}
    assert sorted(by_id) == sorted(f"s{i}" for i in range(len(names)))
    for i, name in enumerate(names):
        top = int(by_id[f"s{i}"].as_numpy("output")[0].argmax())
        assert top == ESPRESSO if name == "coffee" else top in CAT_CLASSES


def test_aio_client(grpc_url):
    async def run():
        async with aioclient.InferenceServerClient(grpc_url) as c:
            assert await c.is_server_ready()
            meta = await c.get_model_metadata(MODEL, as_json=True)
            assert meta["inputs"][0]["shape"] == ["-1", "3", "224", "224"]  # protobuf JSON: int64 as strings
            config = await c.get_model_config(MODEL, as_json=True)
            assert config["config"]["max_batch_size"] == 8
            names = ["chelsea", "coffee", "coffee", "chelsea"]
            results = await asyncio.gather(
                *(
                    c.infer(MODEL, [_input(pixels_nchw(n)[None], aioclient)], request_id=n + str(i))
                    for i, n in enumerate(names)
                )
            )
            for i, (name, result) in enumerate(zip(names, results)):
                assert result.get_response().id == name + str(i)
                top = int(result.as_numpy("output")[0].argmax())
                assert top == ESPRESSO if name == "coffee" else top in CAT_CLASSES
            out = aioclient.InferRequestedOutput("output", class_count=3)
            result = await c.infer(MODEL, [_input(pixels_nchw("coffee")[None], aioclient)], outputs=[out])
            assert result.as_numpy("output")[0][0].decode().endswith(f":{ESPRESSO}:espresso")
            stats = await c.get_inference_statistics(MODEL, as_json=True)
            assert int(stats["model_stats"][0]["inference_count"]) > 0

            async def requests():
                for i in range(4):
                    yield {"model_name": MODEL, "inputs": [_input(pixels_nchw("coffee")[None], aioclient)],
                           "request_id": f"a{i}"}

            seen = []
            async for result, error in c.stream_infer(requests()):
                assert error is None
                seen.append(result.get_response().id)
                assert int(result.as_numpy("output")[0].argmax()) == ESPRESSO
                if len(seen) == 4:
                    break
            assert sorted(seen) == ["a0", "a1", "a2", "a3"]

    asyncio.run(run())


def test_health_service_serving(grpc_url):
    with grpc.insecure_channel(grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_repository_index_and_load_refused_without_explicit_mode(client):
    index = client.get_model_repository_index(as_json=True)
    assert {"name": MODEL, "version": "1", "state": "READY"} in index["models"]
    error = _error(lambda: client.unload_model(MODEL))
    assert error.status() == "StatusCode.UNAVAILABLE" and "explicit" in error.message()
    assert client.is_model_ready(MODEL)


def test_triserve_classify_over_grpc(grpc_url, tmp_path):
    photo("chelsea").save(tmp_path / "a_chelsea.png")
    photo("coffee").save(tmp_path / "b_coffee.jpg")
    result = subprocess.run(
        [sys.executable, "-m", "triserve", "classify", "-i", "grpc", "-u", grpc_url, str(tmp_path),
         "-m", MODEL, "-b", "2", "-c", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("a_chelsea.png:") and lines[3].endswith("b_coffee.jpg:")
    assert int(ast.literal_eval(lines[1])[1]) in CAT_CLASSES
    value, index, label = ast.literal_eval(lines[4])
    assert (int(index), label) == (ESPRESSO, "espresso") and len(value) == 8


# -- bad input: the status code Triton gives, while good requests keep working -------------

GOOD = np.zeros((1, 3, 224, 224), np.float32)


def _raw_request(shape, data: bytes, datatype="FP32", model=MODEL, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="input", datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return request


def _bad_requests():
    yield "unknown model", _raw_request([1, 3, 224, 224], GOOD.tobytes(), model="nope"), "NOT_FOUND", "unknown model"
    yield "unknown version", _raw_request([1, 3, 224, 224], GOOD.tobytes(), model_version="42"), "NOT_FOUND", "version 42 is not found"
    wrong_shape = np.zeros((1, 3, 200, 200), np.float32)
    yield "wrong shape", _raw_request([1, 3, 200, 200], wrong_shape.tobytes()), "INVALID_ARGUMENT", "unexpected shape"
    yield "wrong datatype", _raw_request([1, 3, 224, 224], GOOD.astype(np.float64).tobytes(), "FP64"), "INVALID_ARGUMENT", "data-type"
    yield "byte count mismatch", _raw_request([1, 3, 224, 224], GOOD.tobytes()[:-4]), "INVALID_ARGUMENT", "unexpected size"
    yield "negative dimension", _raw_request([1, 3, -224, 224], GOOD.tobytes()), "INVALID_ARGUMENT", "non-negative"
    yield "unknown datatype", _raw_request([1, 3, 224, 224], GOOD.tobytes(), "FP33"), "INVALID_ARGUMENT", "unknown datatype"
    big = np.zeros((9, 3, 224, 224), np.float32)
    yield "batch above max_batch_size", _raw_request([9, 3, 224, 224], big.tobytes()), "INVALID_ARGUMENT", "batch-size must be <= 8"
    two_raw = _raw_request([1, 3, 224, 224], GOOD.tobytes())
    two_raw.raw_input_contents.append(b"extra")
    yield "raw contents count", two_raw, "INVALID_ARGUMENT", "raw_input_contents"
    no_data = pb.ModelInferRequest(model_name=MODEL)
    no_data.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
    yield "no data", no_data, "INVALID_ARGUMENT", "no data"
    short = pb.ModelInferRequest(model_name=MODEL)
    short.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224]).contents.fp32_contents.extend([1.0, 2.0])
    yield "typed contents count", short, "INVALID_ARGUMENT", "number of elements"
    unknown_output = _raw_request([1, 3, 224, 224], GOOD.tobytes())
    unknown_output.outputs.add(name="logits")
    yield "unknown output", unknown_output, "INVALID_ARGUMENT", "unexpected inference output"
    bad_priority = _raw_request([1, 3, 224, 224], GOOD.tobytes())
    bad_priority.parameters["priority"].string_param = "high"
    yield "bad priority", bad_priority, "INVALID_ARGUMENT", "priority"
    oversized = _raw_request([MAX_MESSAGE // 4 + 1024], bytes(MAX_MESSAGE + 4096))
    yield "oversized message", oversized, "RESOURCE_EXHAUSTED", "larger than max"


@pytest.mark.parametrize("case", list(_bad_requests()), ids=lambda c: c[0])
def test_bad_input_gets_the_triton_status_while_good_requests_succeed(grpc_url, client, case):
    _, request, code, words = case
    good_results = []
    stop = threading.Event()

    def good_traffic():
        with grpcclient.InferenceServerClient(grpc_url) as c:
            while not stop.is_set():
                good_results.append(int(infer(c, pixels_nchw("coffee")[None]).as_numpy("output")[0].argmax()))

    worker = threading.Thread(target=good_traffic)
    worker.start()
    try:
        with grpc.insecure_channel(grpc_url, options=[("grpc.max_send_message_length", -1)]) as channel:
            with pytest.raises(grpc.RpcError) as e:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    finally:
        stop.set()
        worker.join()
    assert e.value.code() == getattr(grpc.StatusCode, code), e.value.details()
    assert words.lower() in e.value.details().lower()
    assert "Traceback" not in e.value.details()
    assert good_results and set(good_results) == {ESPRESSO}
    assert client.is_server_ready()


def test_tritonclient_surfaces_the_status(client):
    error = _error(lambda: client.get_model_metadata("nope"))
    assert error.status() == "StatusCode.NOT_FOUND" and "unknown model" in error.message()
    error = _error(lambda: infer(client, np.zeros((1, 3, 200, 200), np.float32)))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    error = _error(lambda: client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 16))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "GPUs not supported" in error.message()
    assert client.is_server_ready()


# -- servers of their own ----------------------------------------------------------------------

def test_repository_load_and_unload_in_explicit_mode(start_server, example_repo):
    server = start_server(
        "--model-repository", example_repo, "--model-control-mode", "explicit", frontends=("http", "grpc")
    )
    url = f"127.0.0.1:{server.ports['grpc']}"
    with grpcclient.InferenceServerClient(url) as c, grpc.insecure_channel(url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        c.load_model(MODEL)
        assert c.is_model_ready(MODEL)
        c.unload_model(MODEL)
        assert not c.is_model_ready(MODEL)
        rows = [m for m in c.get_model_repository_index(as_json=True)["models"] if m["name"] == MODEL]
        assert rows == [{"name": MODEL, "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
        # As Triton's strict readiness: a model unloaded on purpose is not a failed one.
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        config = json.dumps({"max_batch_size": 4})
        c.load_model(MODEL, config=config)
        assert c.is_model_ready(MODEL)
        assert c.get_model_config(MODEL).config.max_batch_size == 4
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        error = _error(lambda: c.load_model("nope"))
        assert error.status() == "StatusCode.NOT_FOUND"
        error = _error(lambda: c.load_model(MODEL, config="{not json"))
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        # A model that exists only as uploaded files (bytes_param), as Triton's `file:` parameters.
        upload = json.dumps({
            "name": "uploaded", "platform": "onnxruntime_onnx", "max_batch_size": 2,
            "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 224, 224]}],
            "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [1000]}],
        })
        onnx = (example_repo / MODEL / "1" / "model.onnx").read_bytes()
        c.load_model("uploaded", config=upload, files={"file:1/model.onnx": onnx})
        result = c.infer("uploaded", [_input(pixels_nchw("coffee")[None])])
        assert int(result.as_numpy("output")[0].argmax()) == ESPRESSO


def test_sigterm_lets_an_open_stream_finish(start_server, example_repo):
    """A stream open at SIGTERM is served to its end: what it sent before and after the signal."""
    server = start_server("--model-repository", example_repo, frontends=("grpc",))
    url = f"127.0.0.1:{server.ports['grpc']}"
    batch = np.stack([pixels_nchw("coffee")] * 8)

    async def run():
        signalled = asyncio.Event()

        async def requests():
            for i in range(8):
                if i == 4:
                    await signalled.wait()
                yield {"model_name": MODEL, "inputs": [_input(batch, aioclient)], "request_id": str(i)}

        answers = {}
        async with aioclient.InferenceServerClient(url) as c:
            async for result, error in c.stream_infer(requests()):
                assert error is None, error
                answers[result.get_response().id] = result.as_numpy("output")
                if not signalled.is_set():
                    server.process.send_signal(signal.SIGTERM)
                    while "shutting down" not in server.log():  # the rest is sent during shutdown
                        await asyncio.sleep(0.01)
                    signalled.set()
                if len(answers) == 8:
                    break
        return answers

    answers = asyncio.run(run())
    assert sorted(answers) == [str(i) for i in range(8)]
    assert all([int(row.argmax()) for row in out] == [ESPRESSO] * 8 for out in answers.values())
    assert server.process.wait(60) == 0
