"""The KServe v2 gRPC front end in-process: the real grpc.aio server on a free port, on a real
data plane with the tiny models, called by tritonclient.grpc.aio (and the raw stubs, where the
test needs a message the client does not write) in the same event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port
from tests.inprocess import doubler_onnx, repeat_repository, tiny_repository, triton_dataplane
from triserve import __version__
from triserve.core.dataplane import DataPlane
from triserve.options import GRPCOptions, KServeOptions, ServerOptions
from triserve.protocols.kserve import grpc as v2grpc
from triserve.protocols.kserve import trace
from triserve.protocols.kserve.common import EXTENSIONS

pytestmark = pytest.mark.anyio

A = np.arange(16, dtype=np.int32)
B = np.full(16, 3, dtype=np.int32)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Served:
    client: aioclient.InferenceServerClient  # what Triton users call
    stub: service_pb2_grpc.GRPCInferenceServiceStub  # raw messages
    health: health_pb2_grpc.HealthStub

    async def health_status(self, service: str = "") -> int:
        return (await self.health.Check(health_pb2.HealthCheckRequest(service=service))).status


@contextlib.asynccontextmanager
async def served(dataplane: DataPlane, options: ServerOptions = ServerOptions()) -> AsyncIterator[Served]:
    port = free_port()
    frontend = v2grpc.frontend(dataplane, options, port)
    await frontend.start()
    try:
        url = f"127.0.0.1:{port}"
        async with aioclient.InferenceServerClient(url) as client, grpc.aio.insecure_channel(url) as channel:
            yield Served(client, service_pb2_grpc.GRPCInferenceServiceStub(channel), health_pb2_grpc.HealthStub(channel))
    finally:
        await frontend.stop()


@pytest.fixture(scope="module")
async def server(dataplane) -> AsyncIterator[Served]:
    async with served(dataplane) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> aioclient.InferenceServerClient:
    return server.client


def simple_inputs(a=A, b=B) -> list[aioclient.InferInput]:
    inputs = []
    for name, array in (("INPUT0", np.atleast_2d(a)), ("INPUT1", np.atleast_2d(b))):
        tensor = aioclient.InferInput(name, list(array.shape), "INT32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def raw_request(model: str = "simple", a: np.ndarray = A[None], datatype: str = "INT32", **fields) -> pb.ModelInferRequest:
    """`simple`'s two inputs in raw_input_contents, as tritonclient writes them."""
    request = pb.ModelInferRequest(model_name=model, **fields)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype=datatype, shape=a.shape)
        request.raw_input_contents.append(a.tobytes())
    return request


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value


async def client_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        await call
    return e.value


def write_broken_model(repository: Path) -> None:
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "config.pbtxt").write_text('name: "broken" max_batch_size: "lots"')


# -- health and metadata ------------------------------------------------------------------------

async def test_server_live_ready_and_metadata(client):
    assert await client.is_server_live()
    assert await client.is_server_ready()
    meta = await client.get_server_metadata()
    assert (meta.name, meta.version, list(meta.extensions)) == ("triserve", __version__, EXTENSIONS)


async def test_model_ready_per_version(client):
    assert await client.is_model_ready("simple")
    assert await client.is_model_ready("simple", "1")
    assert not await client.is_model_ready("simple", "2")
    assert not await client.is_model_ready("simple", "one")
    assert not await client.is_model_ready("nope")


async def test_metadata_of_the_auto_completed_model(client):
    meta = await client.get_model_metadata("doubler")
    assert (meta.name, meta.platform, list(meta.versions)) == ("doubler", "onnxruntime_onnx", ["1"])
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 3])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 3])]


async def test_config_of_the_auto_completed_model(client):
    config = (await client.get_model_config("doubler", "1")).config
    assert (config.name, config.platform, config.backend) == ("doubler", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 4  # onnxruntime's auto-complete default, as Triton's
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [3])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [3])]
    assert config.HasField("dynamic_batching")
    assert config.instance_group[0].count >= 1


async def test_metadata_and_config_of_unknown_models_and_versions(client):
    error = await client_error(client.get_model_metadata("nope"))
    assert error.status() == "StatusCode.NOT_FOUND" and "unknown model: 'nope'" in error.message()
    error = await client_error(client.get_model_config("simple", "5"))
    assert error.status() == "StatusCode.NOT_FOUND" and "'simple' version 5 is not found" in error.message()


async def test_health_service_answers_serving(server):
    for service in ("", "inference.GRPCInferenceService"):
        assert await server.health_status(service) == SERVING
    error = await rpc_error(server.health.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_strict_readiness_with_a_broken_model_while_good_models_serve(tmp_path):
    repository = tiny_repository(tmp_path)
    write_broken_model(repository)
    async with triton_dataplane(repository) as dataplane, served(dataplane) as s:
        assert await s.client.is_server_live()
        assert not await s.client.is_server_ready()
        assert await s.health_status() == NOT_SERVING
        assert not await s.client.is_model_ready("broken")
        assert await s.client.is_model_ready("simple")
        result = await s.client.infer("simple", simple_inputs())
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (A + B)[None])


async def test_cuda_shared_memory_answers_tritons_words_for_a_server_without_gpus(client):
    error = await client_error(client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 16))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == "failed to register CUDA shared memory region: 'gpu', GPUs not supported"


# -- inference ----------------------------------------------------------------------------------

async def test_infer_with_raw_contents(client):
    result = await client.infer("simple", simple_inputs(), request_id="r1")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("simple", "1", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", "INT32", [1, 16]),
        ("OUTPUT1", "INT32", [1, 16]),
    ]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (A + B)[None])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), (A - B)[None])


async def test_infer_with_typed_contents(server):
    request = pb.ModelInferRequest(model_name="simple", id="typed")
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(array.tolist())
    request.outputs.add(name="OUTPUT1")
    response = await server.stub.ModelInfer(request)
    assert response.id == "typed" and [o.name for o in response.outputs] == ["OUTPUT1"]
    assert np.frombuffer(response.raw_output_contents[0], "<i4").tolist() == (A - B).tolist()


async def test_infer_a_batch_of_floats_with_typed_contents(server):
    x = np.array([[1, 2, 3], [-0.5, 0, 8]], np.float32)
    request = pb.ModelInferRequest(model_name="doubler")
    request.inputs.add(name="x", datatype="FP32", shape=x.shape).contents.fp32_contents.extend(x.ravel().tolist())
    response = await server.stub.ModelInfer(request)
    assert list(response.outputs[0].shape) == [2, 3]
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 3), 2 * x)


async def test_concurrent_requests_each_get_their_own_answer(client):
    """`doubler` batches dynamically: requests queued together may run as one batch."""
    async def double(i: int) -> list:
        tensor = aioclient.InferInput("x", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.array([[i, i + 1, -i]], np.float32))
        result = await client.infer("doubler", [tensor], request_id=str(i))
        assert result.get_response().id == str(i)
        return result.as_numpy("y").tolist()

    answers = await asyncio.gather(*(double(i) for i in range(8)))
    assert answers == [[[2 * i, 2 * i + 2, -2 * i]] for i in range(8)]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
async def test_compressed_calls(client, algorithm):
    result = await client.infer("simple", simple_inputs(), compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (A + B)[None])


async def test_classification_answers_the_top_classes_with_labels(client):
    scores = np.array([[0.1, 0.5, 0.2, 0.9, 0.3]], np.float32)
    tensor = aioclient.InferInput("INPUT", [1, 5], "FP32")
    tensor.set_data_from_numpy(scores)
    output = aioclient.InferRequestedOutput("OUTPUT", class_count=3)
    result = await client.infer("scores", [tensor], outputs=[output])
    assert result.get_output("OUTPUT").datatype == "BYTES"
    assert result.as_numpy("OUTPUT").tolist() == [[b"0.900000:3:three", b"0.500000:1:one", b"0.300000:4:four"]]


async def test_priority_and_timeout_are_accepted(client):
    result = await client.infer("simple", simple_inputs(), priority=1, timeout=10_000_000)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (A + B)[None])


def _bad_requests():
    yield "unknown model", raw_request("nope"), "NOT_FOUND", "unknown model: 'nope'"
    yield "unknown version", raw_request(model_version="3"), "NOT_FOUND", "version 3 is not found"
    yield "version not a number", raw_request(model_version="three"), "INVALID_ARGUMENT", "is not a number"
    yield "wrong datatype", raw_request(a=A[None].astype(np.float32), datatype="FP32"), "INVALID_ARGUMENT", "data-type is 'FP32'"
    yield "wrong shape", raw_request(a=A[None, :15]), "INVALID_ARGUMENT", "unexpected shape for input 'INPUT0'"
    yield "batch above max_batch_size", raw_request(a=np.tile(A, (9, 1))), "INVALID_ARGUMENT", "batch-size must be <= 8"
    yield "unknown datatype", raw_request(datatype="FP33"), "INVALID_ARGUMENT", "unknown datatype 'FP33'"
    short = raw_request()
    short.raw_input_contents[0] = A.tobytes()[:-4]
    yield "byte count", short, "INVALID_ARGUMENT", "unexpected size 60 bytes"
    extra = raw_request()
    extra.raw_input_contents.append(b"extra")
    yield "raw contents count", extra, "INVALID_ARGUMENT", "expected 2 raw_input_contents, one per input, but got 3"
    both = raw_request()
    both.inputs[0].contents.int_contents.extend(A.tolist())
    yield "raw and typed contents", both, "INVALID_ARGUMENT", "contents field must not be specified"
    no_data = pb.ModelInferRequest(model_name="simple")
    no_data.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    yield "no data", no_data, "INVALID_ARGUMENT", "no data"
    yield "no inputs", pb.ModelInferRequest(model_name="simple"), "INVALID_ARGUMENT", "at least one input"
    typed_count = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        typed_count.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend([1, 2])
    yield "typed contents count", typed_count, "INVALID_ARGUMENT", "unexpected number of elements 2 in 'int_contents'"
    fp16 = pb.ModelInferRequest(model_name="doubler")
    fp16.inputs.add(name="x", datatype="FP16", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    yield "FP16 in typed contents", fp16, "INVALID_ARGUMENT", "FP16 data must be sent in raw_input_contents"
    twice = raw_request()
    twice.inputs[1].name = "INPUT0"
    yield "input given twice", twice, "INVALID_ARGUMENT", "input 'INPUT0' is given twice"
    unknown_output = raw_request()
    unknown_output.outputs.add(name="OUTPUT9")
    yield "unknown output", unknown_output, "INVALID_ARGUMENT", "unexpected inference output 'OUTPUT9'"
    classes = raw_request()
    classes.outputs.add(name="OUTPUT0").parameters["classification"].int64_param = -2
    yield "negative classification", classes, "INVALID_ARGUMENT", "'classification' must be a non-negative integer"
    priority = raw_request()
    priority.parameters["priority"].string_param = "high"
    yield "priority not an integer", priority, "INVALID_ARGUMENT", "'priority' must be a non-negative integer"
    timeout = raw_request()
    timeout.parameters["timeout"].int64_param = -1
    yield "negative timeout", timeout, "INVALID_ARGUMENT", "'timeout' must be a non-negative integer"
    shared = raw_request()
    shared.inputs[0].parameters["shared_memory_region"].string_param = "region"
    del shared.raw_input_contents[0]  # the raw contents are those of the inputs not in shared memory
    yield "shared memory input", shared, "NOT_FOUND", "Unable to find shared memory region: 'region'"


@pytest.mark.parametrize("case", list(_bad_requests()), ids=lambda c: c[0])
async def test_bad_requests_get_the_triton_status(server, case):
    _, request, code, words = case
    error = await rpc_error(server.stub.ModelInfer(request))
    assert error.code() == getattr(grpc.StatusCode, code), error.details()
    assert words.lower() in error.details().lower(), error.details()
    assert "Traceback" not in error.details()


async def test_good_requests_succeed_after_bad_ones(server):
    for _, request, _, _ in _bad_requests():
        with contextlib.suppress(grpc.aio.AioRpcError):
            await server.stub.ModelInfer(request)
    result = await server.client.infer("simple", simple_inputs())
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (A + B)[None])
    assert await server.client.is_server_ready()


async def test_a_message_above_the_limit_is_refused(dataplane):
    options = ServerOptions(grpc=GRPCOptions(max_message_bytes=1024))
    async with served(dataplane, options) as s:
        big = np.zeros((8, 16), np.int32)  # 2 x 512 bytes of tensors, beyond 1 KiB with the header
        error = await rpc_error(s.stub.ModelInfer(raw_request(a=big)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await s.stub.ModelInfer(raw_request())).model_name == "simple"


# -- streaming ----------------------------------------------------------------------------------

async def test_stream_answers_several_requests_with_their_ids(client):
    async def requests():
        for i in range(4):
            yield {"model_name": "simple", "inputs": simple_inputs(A, np.full(16, i, np.int32)), "request_id": f"s{i}"}

    answers = {}
    async for result, error in client.stream_infer(requests()):
        assert error is None, error
        answers[result.get_response().id] = result.as_numpy("OUTPUT0")
        if len(answers) == 4:
            break
    assert sorted(answers) == ["s0", "s1", "s2", "s3"]
    for i in range(4):
        assert answers[f"s{i}"].tolist() == [(A + i).tolist()]


async def test_a_bad_request_on_a_stream_gets_an_error_message_while_the_others_succeed(server):
    sent = [raw_request(id="good0"), raw_request("nope", id="bad"), raw_request(a=A[None, :15], id="bad shape"), raw_request(id="good1")]

    async def requests():
        for request in sent:
            yield request

    answers = {}
    async for response in server.stub.ModelStreamInfer(requests()):
        answers[response.infer_response.id] = response
    assert sorted(answers) == ["bad", "bad shape", "good0", "good1"]
    assert "unknown model: 'nope'" in answers["bad"].error_message
    assert answers["bad"].infer_response.model_name == "nope"
    assert "unexpected shape" in answers["bad shape"].error_message
    for good in ("good0", "good1"):
        assert answers[good].error_message == ""
        output = answers[good].infer_response.raw_output_contents[0]
        assert np.frombuffer(output, "<i4").tolist() == (A + A).tolist()


# -- tracing a stream, and decoupled models ------------------------------------------------------

def trace_options(path: Path) -> ServerOptions:
    """Tracing on from the start for every request (TIMESTAMPS and TENSORS), into `path`."""
    config = (f"triton,file={path}", "level=TIMESTAMPS", "level=TENSORS", "rate=1")
    return ServerOptions(kserve=KServeOptions(trace_config=config))


def traces_in(path: Path) -> dict[str, list[dict]]:
    """The trace file's objects of each request, by request id."""
    trace.WRITER.submit(lambda: None).result()  # what was handed to the writer is written
    items = json.loads(path.read_text())
    ids = {i["id"]: i["request_id"] for i in items if "model_name" in i}
    found: dict[str, list[dict]] = {}
    for item in items:
        found.setdefault(ids[item["id"]], []).append(item)
    return found


def names_of(items: list[dict]) -> list[str]:
    return [i["timestamps"][0]["name"] if "timestamps" in i else i.get("activity", "model") for i in items]


STREAM_ORDER = [
    "model", "GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "REQUEST_START", "QUEUE_START", "TENSOR_QUEUE_INPUT",
    "TENSOR_QUEUE_INPUT", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END",
    "TENSOR_BACKEND_OUTPUT", "TENSOR_BACKEND_OUTPUT", "INFER_RESPONSE_COMPLETE", "REQUEST_END", "GRPC_SEND_START",
    "GRPC_SEND_END",
]


async def test_each_request_of_a_stream_is_traced_as_model_infer_traces_it(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path / "models")) as plane:
        async with served(plane, trace_options(tmp_path / "trace.json")) as s:
            async def requests():
                for i in range(3):
                    yield raw_request(a=np.full((1, 16), i, np.int32), id=f"s{i}")

            answered = [r.infer_response.id async for r in s.stub.ModelStreamInfer(requests())]
            assert sorted(answered) == ["s0", "s1", "s2"]
    traces = traces_in(tmp_path / "trace.json")
    assert sorted(traces) == ["s0", "s1", "s2"]
    for i in range(3):
        items = traces[f"s{i}"]
        assert names_of(items) == STREAM_ORDER
        assert items[0]["model_name"] == "simple"
        ns = [item["timestamps"][0]["ns"] for item in items if "timestamps" in item]
        assert ns == sorted(ns)
        outputs = [item["tensor"] for item in items if item.get("activity") == "TENSOR_BACKEND_OUTPUT"]
        assert outputs[0] == {"name": "OUTPUT0", "data": ",".join([str(2 * i)] * 16), "shape": "1,16", "dtype": "INT32"}


async def test_a_decoupled_model_is_refused_by_model_infer_in_tritons_words_and_traced_on_a_stream(tmp_path):
    async with triton_dataplane(repeat_repository(tmp_path / "models")) as plane:
        async with served(plane, trace_options(tmp_path / "trace.json")) as s:
            values = aioclient.InferInput("IN", [3], "INT32")
            values.set_data_from_numpy(np.array([4, 5, 6], np.int32))
            e = await client_error(s.client.infer("repeat", [values], request_id="unary"))
            # Triton's ModelInferHandler::Execute: UNSUPPORTED, which its gRPC codes make UNIMPLEMENTED
            assert (e.status(), e.message()) == (
                "StatusCode.UNIMPLEMENTED", "ModelInfer RPC doesn't support models with decoupled transaction policy")

            async def requests():
                yield {"model_name": "repeat", "inputs": [values], "request_id": "many"}

            got = []
            async for result, error in s.client.stream_infer(requests()):  # read to the stream's end
                assert error is None, error
                got.append(int(result.as_numpy("OUT")[0]))
            assert got == [4, 5, 6]
    traces = traces_in(tmp_path / "trace.json")
    assert sorted(traces) == ["many"]  # the refused request was not traced (Triton refuses before tracing)
    items = traces["many"]
    names = names_of(items)
    assert names[:6] == ["model", "GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "REQUEST_START", "QUEUE_START",
                         "TENSOR_QUEUE_INPUT"]
    assert names.count("GRPC_SEND_START") == names.count("GRPC_SEND_END") == 3  # one per response
    assert names.count("INFER_RESPONSE_COMPLETE") == 1 and "COMPUTE_START" in names and "REQUEST_END" in names
    outputs = [i["tensor"]["data"] for i in items if i.get("activity") == "TENSOR_BACKEND_OUTPUT"]
    assert outputs == ["4", "5", "6"]
    queued = [i["tensor"] for i in items if i.get("activity") == "TENSOR_QUEUE_INPUT"]
    assert queued == [{"name": "IN", "data": "4,5,6", "shape": "3", "dtype": "INT32"}]


# -- statistics ---------------------------------------------------------------------------------

async def test_statistics_of_a_model_count_its_inferences(client):
    async def stats():
        (model,) = (await client.get_inference_statistics("scores")).model_stats
        return model

    before = await stats()
    tensor = aioclient.InferInput("INPUT", [3, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((3, 5), np.float32))
    await client.infer("scores", [tensor])
    after = await stats()
    assert (after.name, after.version) == ("scores", "1")
    assert after.inference_count == before.inference_count + 3
    assert after.execution_count == before.execution_count + 1
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.compute_infer.count == before.inference_stats.compute_infer.count + 1
    assert 3 in [b.batch_size for b in after.batch_stats]
    (by_version,) = (await client.get_inference_statistics("scores", "1")).model_stats
    assert by_version.inference_count == after.inference_count


async def test_statistics_of_every_model_and_of_unknown_ones(client):
    every = (await client.get_inference_statistics()).model_stats
    assert sorted(s.name for s in every) == ["doubler", "scores", "simple"]
    error = await client_error(client.get_inference_statistics("nope"))
    assert error.status() == "StatusCode.NOT_FOUND"


# -- model repository ---------------------------------------------------------------------------

async def test_repository_index_and_the_refusal_without_explicit_mode(client):
    index = await client.get_model_repository_index(as_json=True)
    assert index["models"] == [{"name": n, "version": "1", "state": "READY"} for n in ("doubler", "scores", "simple")]
    for call in (client.load_model("simple"), client.unload_model("simple")):
        error = await client_error(call)
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert "explicit model load / unload is not allowed if polling is enabled" in error.message()
        assert "model control mode is NONE" in error.message()
    assert await client.is_model_ready("simple")


@pytest.fixture
async def explicit(tmp_path) -> AsyncIterator[Served]:
    """Explicit control mode with only `simple` loaded at start."""
    repository = tiny_repository(tmp_path / "models")
    async with triton_dataplane(repository, control_mode="explicit", load_models=["simple"]) as dataplane:
        async with served(dataplane) as s:
            yield s


async def test_explicit_mode_loads_and_unloads_on_request(explicit):
    client = explicit.client
    ready = await explicit.stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert [(m.name, m.version, m.state) for m in ready.models] == [("simple", "1", "READY")]
    assert not await client.is_model_ready("doubler")

    await client.load_model("doubler")
    assert await client.is_model_ready("doubler")
    assert await explicit.health_status() == SERVING
    await client.unload_model("doubler", unload_dependents=True)
    assert not await client.is_model_ready("doubler")
    rows = [m for m in (await client.get_model_repository_index(as_json=True))["models"] if m["name"] == "doubler"]
    assert rows == [{"name": "doubler", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    # as Triton's: a model unloaded on purpose leaves the server ready
    assert await explicit.health_status() == SERVING
    assert await client.is_server_ready()

    for call in (client.load_model("nope"), client.unload_model("nope")):
        assert (await client_error(call)).status() == "StatusCode.NOT_FOUND"


async def test_load_with_a_config_override(explicit):
    client = explicit.client
    await client.load_model("simple", config=json.dumps({"max_batch_size": 2}))
    assert (await client.get_model_config("simple")).config.max_batch_size == 2
    error = await client_error(client.infer("simple", simple_inputs(np.tile(A, (3, 1)), np.tile(B, (3, 1)))))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "batch-size must be <= 2" in error.message()
    error = await client_error(client.load_model("simple", config="{not json"))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "failed to parse model config JSON" in error.message()
    assert error.message().startswith("failed to load 'simple', failed to poll from model repository: ")
    assert (await client.get_model_config("simple")).config.max_batch_size == 2


UPLOADED_CONFIG = json.dumps({
    "name": "uploaded",
    "platform": "onnxruntime_onnx",
    "max_batch_size": 2,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
})


async def test_load_a_model_from_file_parameters_as_bytes(explicit, tmp_path):
    doubler_onnx(tmp_path / "doubler.onnx")
    content = (tmp_path / "doubler.onnx").read_bytes()
    await explicit.client.load_model("uploaded", config=UPLOADED_CONFIG, files={"file:1/model.onnx": content})
    assert await explicit.client.is_model_ready("uploaded", "1")
    tensor = aioclient.InferInput("x", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.array([[0.5, 1, -2]], np.float32))
    result = await explicit.client.infer("uploaded", [tensor])
    assert result.as_numpy("y").tolist() == [[1, 2, -4]]


async def test_file_parameters_must_be_bytes_and_come_with_a_config(explicit):
    as_text = pb.RepositoryModelLoadRequest(model_name="uploaded")
    as_text.parameters["config"].string_param = UPLOADED_CONFIG
    as_text.parameters["file:1/model.onnx"].string_param = "not bytes"
    error = await rpc_error(explicit.stub.RepositoryModelLoad(as_text))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "must be a bytes_param" in error.details()
    no_config = pb.RepositoryModelLoadRequest(model_name="uploaded")
    no_config.parameters["file:1/model.onnx"].bytes_param = b"onnx"
    error = await rpc_error(explicit.stub.RepositoryModelLoad(no_config))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'config' parameter must be given" in error.details()


# -- BYTES tensors end to end (string models) ----------------------------------------------------

@pytest.fixture(scope="module")
async def strings(tmp_path_factory) -> AsyncIterator[Served]:
    """`simple_string` and `simple_identity` (tests/inprocess.py) served over gRPC."""
    from tests.inprocess import string_repository

    async with triton_dataplane(string_repository(tmp_path_factory.mktemp("strings"))) as plane:
        async with served(plane) as s:
            yield s


NUMBERS = [str(i).encode() for i in range(16)]
STRANGE = [b"he\x00llo", "é€😀".encode(), b"", b"\x00\x01\x02\x03", b"b'1'"]


def _sums_of(result) -> tuple[list[int], list[int]]:
    return [int(x) for x in result.as_numpy("OUTPUT0")[0]], [int(x) for x in result.as_numpy("OUTPUT1")[0]]


async def test_string_model_with_raw_contents_as_tritonclient_sends_them(strings):
    inputs = [aioclient.InferInput("INPUT0", [1, 16], "BYTES"), aioclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([NUMBERS], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[b"1"] * 16], dtype=np.object_))
    result = await strings.client.infer("simple_string", inputs)
    assert result.get_output("OUTPUT0").datatype == "BYTES"
    assert _sums_of(result) == ([i + 1 for i in range(16)], [i - 1 for i in range(16)])


async def test_string_model_with_bytes_contents(strings):
    """grpc_explicit_byte_content_client.py's request: typed `bytes_contents`, raw outputs."""
    request = pb.ModelInferRequest(model_name="simple_string")
    for name, values in (("INPUT0", NUMBERS), ("INPUT1", [b"1"] * 16)):
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[1, 16])
        tensor.contents.bytes_contents.extend(values)
    response = await strings.stub.ModelInfer(request)
    assert [o.datatype for o in response.outputs] == ["BYTES", "BYTES"]
    sums = tensors_from_raw(response.raw_output_contents[0], 16)
    assert sums == [str(i + 1).encode() for i in range(16)]


def tensors_from_raw(blob: bytes, count: int) -> list[bytes]:
    from tritonclient.utils import deserialize_bytes_tensor

    items = deserialize_bytes_tensor(blob).tolist()
    assert len(items) == count
    return items


@pytest.mark.parametrize("typed", [False, True], ids=["raw_input_contents", "bytes_contents"])
async def test_bytes_come_back_unchanged_through_a_string_identity_model(strings, typed):
    request = pb.ModelInferRequest(model_name="simple_identity")
    tensor = request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, len(STRANGE)])
    if typed:
        tensor.contents.bytes_contents.extend(STRANGE)
    else:
        from tritonclient.utils import serialize_byte_tensor

        request.raw_input_contents.append(serialize_byte_tensor(np.array(STRANGE, dtype=np.object_)).item())
    response = await strings.stub.ModelInfer(request)
    assert list(response.outputs[0].shape) == [1, len(STRANGE)]
    assert tensors_from_raw(response.raw_output_contents[0], len(STRANGE)) == STRANGE


async def test_bytes_that_are_not_utf8_are_refused_for_an_onnx_string_input(strings):
    request = pb.ModelInferRequest(model_name="simple_identity")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"\xff")
    error = await rpc_error(strings.stub.ModelInfer(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not UTF-8 text" in error.details()


# -- Triton's words ----------------------------------------------------------------------------

async def test_load_errors_in_tritons_words(explicit):
    error = await client_error(explicit.client.load_model("wrong_model_name"))
    assert "failed to load 'wrong_model_name', failed to poll from model repository" in error.message()
    error = await client_error(explicit.client.load_model("uploaded", config="{}", files={"file:" + "A" * 256: b"a"}))
    assert "failed to load 'uploaded', failed to poll from model repository: " in error.message()
    bad_input = {"max_batch_size": 2, "platform": "onnxruntime_onnx", "input": [{"name": "nope", "data_type": "TYPE_FP32", "dims": [3]}]}
    error = await client_error(explicit.client.load_model("doubler", config=json.dumps(bad_input)))
    assert error.message().startswith("load failed for model 'doubler': ") and "'nope'" in error.message()
    assert await explicit.client.is_server_live()


@pytest.mark.anyio
async def test_raw_fixed_size_contents_are_read_without_a_thread_hop(tmp_path, monkeypatch):
    from triserve.protocols.transport import offload

    hopped, off_loop = [], offload.off_loop

    async def counted(work, *args):
        hopped.append(work)
        return await off_loop(work, *args)

    monkeypatch.setattr(offload, "OFF_LOOP_SIZE", 0)  # any work that counts goes to a thread
    monkeypatch.setattr(offload, "off_loop", counted)
    x = np.arange(12, dtype="<f4").reshape(4, 3)
    request = pb.ModelInferRequest(model_name="doubler")
    request.inputs.add(name="x", datatype="FP32", shape=[4, 3])
    request.raw_input_contents.append(x.tobytes())
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        decoded = await v2grpc.decode_infer_request(dataplane.model("doubler", None), request)
    np.testing.assert_array_equal(decoded.inputs["x"], x)
    assert v2grpc._read_inputs not in hopped  # viewing raw FP32 contents needs no worker thread
