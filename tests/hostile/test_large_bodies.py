"""Large bodies and messages are decoded in a worker process, so the event loop keeps answering:
v2 JSON bodies of numbers or of BYTES strings, TF Serving REST `instances`, a TF Serving gRPC
Predict of millions of `string_val` elements, KServe gRPC typed contents. Real servers on free
ports (in-process, over one data plane with the tiny models and `echo`).

Each test holds the worker process at a gate until health checks and good inferences have been
answered, so "answered while the decode is in flight" is decided by events and counts, never by
time; then the gate opens and the answer is checked. The server's own process never runs the
JSON parser on a large body (a spy on orjson.loads). The health checks' latencies while the real
decode runs are printed (`pytest -s`), not asserted."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, NamedTuple

import grpc
import httpx
import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb

from tests.conftest import free_port
from tests.hostile.models import echo_repository
from tests.inprocess import triton_dataplane
from tests.rawhttp import serving
from triserve.options import ServerOptions
from triserve.protocols.kserve import grpc as v2grpc
from triserve.protocols.kserve.rest import V2HTTP
from triserve.protocols.tfserving import grpc as tfgrpc
from triserve.protocols.tfserving.rest import TFServingREST
from triserve.protocols.transport import processes
from triserve.protos import tensorflow_pb2 as tf
from triserve.protos import tfserving_apis_pb2 as apis

pytestmark = pytest.mark.anyio

MiB = 1 << 20
GOOD = 10  # health checks and good inferences answered while the decode waits at the gate
WAIT = 120  # seconds: only bounds a test whose server hangs; nothing here is timed
SIMPLE = {"inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
]}
SUM = [i + 1 for i in range(16)]


class Servers(NamedTuple):
    v2: httpx.AsyncClient
    tf: httpx.AsyncClient
    kserve_grpc: grpc.aio.Channel
    tf_grpc: grpc.aio.Channel


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def servers(tmp_path_factory) -> AsyncIterator[Servers]:
    async with triton_dataplane(echo_repository(tmp_path_factory.mktemp("models"))) as dataplane:
        grpc_ports = free_port(), free_port()
        frontends = [v2grpc.frontend(dataplane, ServerOptions(), grpc_ports[0]),
                     tfgrpc.frontend(dataplane, ServerOptions(), grpc_ports[1])]
        for frontend in frontends:
            await frontend.start()
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        try:
            async with contextlib.AsyncExitStack() as stack:
                v2_port = await stack.enter_async_context(serving(V2HTTP(dataplane).app()))
                tf_port = await stack.enter_async_context(serving(TFServingREST(dataplane).app()))
                v2 = await stack.enter_async_context(httpx.AsyncClient(base_url=f"http://127.0.0.1:{v2_port}", timeout=WAIT))
                tf_rest = await stack.enter_async_context(
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{tf_port}", timeout=WAIT))
                kserve_channel = await stack.enter_async_context(
                    grpc.aio.insecure_channel(f"127.0.0.1:{grpc_ports[0]}", options=options))
                tf_channel = await stack.enter_async_context(
                    grpc.aio.insecure_channel(f"127.0.0.1:{grpc_ports[1]}", options=options))
                yield Servers(v2, tf_rest, kserve_channel, tf_channel)
        finally:
            for frontend in frontends:
                await frontend.stop()


# -- the gate: a worker process that waits until the test lets it decode --------------------
def gated(gate: str, work: Callable[..., Any], *args: Any) -> Any:
    """In the worker process: wait for the gate file, then do the real work."""
    while not Path(gate).exists():
        time.sleep(0.01)
    return work(*args)


def die(*args: Any) -> None:
    os._exit(9)  # as a worker killed for memory


class Gate:
    """Stands in for processes.run: counts the jobs and holds each at the gate in its worker."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.submitted = asyncio.Event()
        self.jobs: list[str] = []

    async def run(self, work: Callable[..., Any], *args: Any) -> Any:
        self.jobs.append(getattr(work, "__name__", None) or work.func.__name__)
        self.submitted.set()
        return await processes.pool().run(functools.partial(gated, str(self.path), work), *args)

    def open(self) -> None:
        self.path.touch()


@pytest.fixture
def gate(tmp_path, monkeypatch) -> Gate:
    gate = Gate(tmp_path / "open")
    monkeypatch.setattr(processes, "run", gate.run)
    return gate


@pytest.fixture
def parsed(monkeypatch) -> list[int]:
    """The sizes of the documents orjson.loads parses in the server's own process."""
    sizes: list[int] = []
    loads = orjson.loads

    def spy(data: Any) -> Any:
        sizes.append(len(data))
        return loads(data)

    monkeypatch.setattr(orjson, "loads", spy)
    return sizes


async def good_requests(v2: httpx.AsyncClient, count: int) -> list[float]:
    """`count` health checks and good inferences, each answered right; the checks' latencies in ms."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        assert (await v2.get("/v2/health/live")).status_code == 200
        latencies.append((time.perf_counter() - started) * 1000)
        answer = await v2.post("/v2/models/simple/infer", json=SIMPLE)
        assert answer.status_code == 200, answer.text
        assert {o["name"]: o["data"] for o in answer.json()["outputs"]}["OUTPUT0"] == SUM
    return latencies


async def while_decoded(servers: Servers, gate: Gate, hostile: Any, what: str) -> Any:
    """Send `hostile`; once it is at the gate, GOOD health checks and good inferences must be
    answered (it cannot finish meanwhile: the gate is shut); then open the gate and keep
    checking health until its answer comes. Returns that answer."""
    task = asyncio.ensure_future(hostile)
    await asyncio.wait_for(gate.submitted.wait(), WAIT)
    await good_requests(servers.v2, GOOD)
    assert not task.done()  # every good request above was answered while the decode was in flight
    gate.open()
    started = time.perf_counter()
    latencies = []
    while not task.done():
        latencies += await good_requests(servers.v2, 1)
    answer = await task
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    print(f"\n{what}: decoded and answered {(time.perf_counter() - started) * 1000:.0f} ms after the gate opened;"
          f" {len(latencies)} health checks meanwhile, p99 {p99:.1f} ms, max {max(latencies, default=0):.1f} ms")
    return answer


def v2_json(inputs: list[dict]) -> bytes:
    return orjson.dumps({"inputs": inputs})


# -- v2 HTTP --------------------------------------------------------------------------------
async def test_a_large_json_body_of_numbers_is_decoded_off_the_server_process(servers, gate, parsed):
    count = 4 * MiB // 4 // 5 * 5  # about 4 MiB of numbers for `scores` [-1, 5] (batch at most 4)
    body = b'{"inputs":[{"name":"INPUT","datatype":"FP32","shape":[%d,5],"data":[%s]}]}' % (
        count // 5, b",".join([b"0.5"] * count))
    answer = await while_decoded(servers, gate, servers.v2.post("/v2/models/scores/infer", content=body),
                                 "v2 JSON, 4 MiB of numbers")
    assert answer.status_code == 400
    assert answer.json()["error"].endswith(f"inference request batch-size must be <= 4 for 'scores', got {count // 5}")
    assert gate.jobs == ["decode"]
    assert max(parsed) < processes.LARGE  # only the good requests' small bodies were parsed here


async def test_large_json_bytes_to_an_fp32_model_are_refused_by_datatype_unread(servers, gate, parsed):
    count = 4 * MiB // 4
    body = v2_json([{"name": "INPUT", "datatype": "BYTES", "shape": [count], "data": ["a"] * count}])
    answer = await while_decoded(servers, gate, servers.v2.post("/v2/models/scores/infer", content=body),
                                 "v2 JSON, 4 MiB of BYTES to FP32")
    assert answer.status_code == 400
    assert answer.json()["error"].endswith("inference input 'INPUT' data-type is 'BYTES', but model 'scores' expects 'FP32'")
    assert max(parsed) < processes.LARGE


async def test_a_large_good_json_body_of_bytes_is_answered_right(servers, gate, parsed):
    rows = [[f"{r}-{i}" for i in range(40_000)] for r in range(8)]  # about 3 MiB of JSON strings
    body = v2_json([{"name": "TEXT", "datatype": "BYTES", "shape": [8, 40_000], "data": rows}])
    answer = await while_decoded(servers, gate, servers.v2.post("/v2/models/echo/infer", content=body),
                                 "v2 JSON, 3 MiB of good BYTES")
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert (output["name"], output["shape"]) == ("ECHO", [8, 40_000])
    assert output["data"] == [text for row in rows for text in row]
    assert max(parsed) < processes.LARGE


async def test_a_worker_process_that_dies_fails_only_its_request_with_503(servers, monkeypatch):
    run = processes.run

    async def dying(work: Callable[..., Any], *args: Any) -> Any:
        return await processes.pool().run(die, *args)

    count = 2 * MiB // 4
    body = v2_json([{"name": "INPUT", "datatype": "BYTES", "shape": [count], "data": ["a"] * count}])
    monkeypatch.setattr(processes, "run", dying)
    answer = await servers.v2.post("/v2/models/scores/infer", content=body)
    assert answer.status_code == 503
    assert answer.json() == {"error": "the process decoding the request stopped before it finished (the request was"
                                      " not run); try again"}
    monkeypatch.setattr(processes, "run", run)
    answer = await servers.v2.post("/v2/models/scores/infer", content=body)  # a new process decodes it
    assert answer.status_code == 400
    assert "data-type is 'BYTES'" in answer.json()["error"]
    await good_requests(servers.v2, 2)


# -- TF Serving REST ----------------------------------------------------------------------------
async def test_large_tfserving_instances_of_the_wrong_shape_are_refused_unread(servers, gate, parsed):
    rows = 4 * MiB // 26
    body = b'{"instances":[' + b",".join([b"[0.5,0.5,0.5,0.5,0.5,0.5]"] * rows) + b"]}"
    answer = await while_decoded(servers, gate, servers.tf.post("/v1/models/scores:predict", content=body),
                                 "TF REST, 4 MiB of instances")
    assert answer.status_code == 400
    assert "unexpected shape for input 'INPUT' for model 'scores'" in answer.json()["error"]
    assert gate.jobs == ["decode"]
    assert max(parsed) < processes.LARGE


async def test_large_good_tfserving_instances_are_answered_right(servers, gate, parsed):
    rows = [[f"{r}-{i}" for i in range(40_000)] for r in range(8)]
    body = orjson.dumps({"instances": rows})
    answer = await while_decoded(servers, gate, servers.tf.post("/v1/models/echo:predict", content=body),
                                 "TF REST, 3 MiB of good instances")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": rows}
    assert max(parsed) < processes.LARGE


async def test_a_large_tfserving_body_to_an_unknown_model_is_404_unread(servers, gate):
    body = b'{"instances":[' + b",".join([b"[0.5,0.5,0.5,0.5,0.5]"] * (2 * MiB // 22)) + b"]}"
    gate.open()
    answer = await servers.tf.post("/v1/models/nothing:predict", content=body)
    assert answer.status_code == 404
    assert answer.json() == {"error": "Servable not found for request: Latest(nothing)"}


async def test_a_large_tfserving_body_with_both_instances_and_inputs_is_refused_unread(servers, gate):
    rows = b",".join([b"[0.5,0.5,0.5,0.5,0.5]"] * (2 * MiB // 22))
    gate.open()
    answer = await servers.tf.post("/v1/models/scores:predict", content=b'{"instances":[%s],"inputs":[%s]}' % (rows, rows))
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "JSON Value: Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"}


async def test_a_large_json_document_with_too_much_outside_tensor_data_is_refused(servers, gate):
    body = orjson.dumps({"inputs": [], "parameters": {"junk": [0] * 600_000}})
    gate.open()
    answer = await servers.v2.post("/v2/models/scores/infer", content=body)
    assert answer.status_code == 400
    assert answer.json() == {"error": "the request JSON holds more than 262144 values besides tensor data (where they"
                                      " are not read); send large tensors as tensor data"}


# -- gRPC -----------------------------------------------------------------------------------------
def unary(channel: grpc.aio.Channel, path: str) -> Callable[[bytes], Any]:
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


def string_tensor(values: list[bytes], shape: list[int]) -> tf.TensorProto:
    tensor = tf.TensorProto(dtype=tf.DT_STRING)
    tensor.tensor_shape.dim.extend(tf.TensorShapeProto.Dim(size=d) for d in shape)
    tensor.string_val.extend(values)
    return tensor


async def test_millions_of_tfserving_string_val_elements_are_refused_unread_by_a_worker(servers, gate):
    count = 2 * MiB  # more than --grpc-max-bytes-elements (1,048,576): left unread
    request = apis.PredictRequest()
    request.model_spec.name = "scores"
    request.inputs["INPUT"].CopyFrom(string_tensor([b"a"] * count, [count]))
    predict = unary(servers.tf_grpc, f"/{tfgrpc.PREDICTION_SERVICE}/Predict")
    call = predict(request.SerializeToString(), timeout=WAIT)

    async def outcome() -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return caught.value

    error = await while_decoded(servers, gate, outcome(), "TF gRPC, 2 Mi string_val elements to FP32")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().endswith("inference input 'INPUT' data-type is 'BYTES', but model 'scores' expects 'FP32'")
    assert gate.jobs == ["predict_request"]


async def test_a_large_good_tfserving_predict_is_answered_right(servers, gate):
    values = [f"{i}".encode() for i in range(8 * 50_000)]
    request = apis.PredictRequest()
    request.model_spec.name = "echo"
    request.inputs["TEXT"].CopyFrom(string_tensor(values, [8, 50_000]))
    predict = servers.tf_grpc.unary_unary(f"/{tfgrpc.PREDICTION_SERVICE}/Predict", request_serializer=None,
                                          response_deserializer=apis.PredictResponse.FromString)
    response = await while_decoded(servers, gate, predict(request.SerializeToString(), timeout=WAIT),
                                   "TF gRPC, 400k good string_val elements")
    echoed = response.outputs["ECHO"]
    assert [d.size for d in echoed.tensor_shape.dim] == [8, 50_000]
    assert list(echoed.string_val) == values
    assert gate.jobs == ["predict_request"]


def serialized_bytes(blob: bytes) -> list[bytes]:
    """BYTES elements from their v2 serialization (a 4-byte little-endian length before each)."""
    items, offset = [], 0
    while offset < len(blob):
        length = int.from_bytes(blob[offset : offset + 4], "little")
        items.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


@pytest.mark.parametrize("kind", ["typed contents", "raw contents"])
async def test_a_large_good_kserve_request_is_decoded_by_a_worker_and_answered_right(servers, gate, kind):
    values = [f"{i}".encode() for i in range(8 * 50_000)]
    request = pb.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[8, 50_000])
    if kind == "typed contents":
        tensor.contents.bytes_contents.extend(values)
    else:
        request.raw_input_contents.append(b"".join(len(v).to_bytes(4, "little") + v for v in values))
    infer = servers.kserve_grpc.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                                            response_deserializer=pb.ModelInferResponse.FromString)
    response = await while_decoded(servers, gate, infer(request.SerializeToString(), timeout=WAIT),
                                   f"KServe gRPC, 400k good BYTES elements in {kind}")
    assert (response.outputs[0].name, list(response.outputs[0].shape)) == ("ECHO", [8, 50_000])
    assert serialized_bytes(response.raw_output_contents[0]) == values
    assert gate.jobs == ["infer_request"]


async def test_millions_of_kserve_bytes_contents_to_an_fp32_model_are_refused_unread_by_a_worker(servers, gate):
    count = 2 * MiB  # more than --grpc-max-bytes-elements: left unread
    request = pb.ModelInferRequest(model_name="scores")
    request.inputs.add(name="INPUT", datatype="BYTES", shape=[count]).contents.bytes_contents.extend([b"a"] * count)
    call = unary(servers.kserve_grpc, "/inference.GRPCInferenceService/ModelInfer")(
        request.SerializeToString(), timeout=WAIT)

    async def outcome() -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return caught.value

    error = await while_decoded(servers, gate, outcome(), "KServe gRPC, 2 Mi bytes_contents elements to FP32")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().endswith("inference input 'INPUT' data-type is 'BYTES', but model 'scores' expects 'FP32'")
    assert gate.jobs == ["infer_request"]


async def test_a_large_message_in_a_kserve_stream_is_decoded_by_a_worker_and_answered_right(servers, gate):
    values = [f"{i}".encode() for i in range(8 * 50_000)]
    request = pb.ModelInferRequest(model_name="echo", id="big")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[8, 50_000]).contents.bytes_contents.extend(values)
    stream = servers.kserve_grpc.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                               request_serializer=None,
                                               response_deserializer=pb.ModelStreamInferResponse.FromString)

    async def answers() -> list:
        return [answer async for answer in stream(iter([request.SerializeToString()]), timeout=WAIT)]

    (answer,) = await while_decoded(servers, gate, answers(), "KServe gRPC stream, one large message")
    assert answer.error_message == ""
    assert answer.infer_response.id == "big"
    assert serialized_bytes(answer.infer_response.raw_output_contents[0]) == values
    assert gate.jobs == ["infer_request"]


async def test_a_large_valid_json_answer_is_encoded_and_compressed_off_the_event_loop(servers, monkeypatch):
    from triserve.protocols.kserve import rest

    loop_thread = threading.get_ident()
    where: dict[str, list[bool]] = {"encode": [], "compress": []}

    def spied(name: str, work: Callable[..., Any]) -> Callable[..., Any]:
        def spy(*args: Any) -> Any:
            where[name].append(threading.get_ident() == loop_thread)
            return work(*args)
        return spy

    monkeypatch.setattr(rest, "encode_infer_response", spied("encode", rest.encode_infer_response))
    monkeypatch.setattr(rest, "compress", spied("compress", rest.compress))
    texts = [f"t{i}" for i in range(80_000)]  # more elements than offload.OFF_LOOP_SIZE
    large = v2_json([{"name": "TEXT", "datatype": "BYTES", "shape": [1, 80_000], "data": [texts]}])
    small = v2_json([{"name": "TEXT", "datatype": "BYTES", "shape": [1, 2], "data": [["a", "b"]]}])
    answer = await servers.v2.post("/v2/models/echo/infer", content=large, headers={"Accept-Encoding": "gzip"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == texts  # httpx inflates the gzip answer
    assert where == {"encode": [False], "compress": [False]}  # on a worker thread, not the loop's
    answer = await servers.v2.post("/v2/models/echo/infer", content=small)
    assert answer.json()["outputs"][0]["data"] == ["a", "b"]
    assert where["encode"] == [False, True]  # a small answer is encoded where it is (no thread hop)


async def test_a_large_json_body_goes_to_the_worker_as_the_buffer_it_was_read_into(servers, monkeypatch):
    sent: list[type] = []
    real = processes.run

    async def spy(work: Callable[..., Any], *args: Any) -> Any:
        sent.append(type(args[1]))  # json_input.decode(parse, body, predecode, what)
        return await real(work, *args)

    monkeypatch.setattr(processes, "run", spy)
    texts = [f"text-{i}" for i in range(200_000)]  # about 2.4 MiB of JSON
    body = v2_json([{"name": "TEXT", "datatype": "BYTES", "shape": [1, 200_000], "data": [texts]}])
    answer = await servers.v2.post("/v2/models/echo/infer", content=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == texts
    tf_body = orjson.dumps({"inputs": {"TEXT": [texts]}})  # columnar, over processes.LARGE
    answer = await servers.tf.post("/v1/models/echo:predict", content=tf_body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == [texts]
    assert sent == [bytearray, bytearray]  # preallocated from Content-Length, not joined, not copied again
