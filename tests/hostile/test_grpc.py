"""Hostile input to both gRPC APIs (KServe `inference.GRPCInferenceService`, TF Serving
`PredictionService` / `ModelService`), in-process: the real grpc.aio servers on free ports over a
real data plane with the tiny models. Bytes that are no protobuf, a stream that sends one, 60 MiB
of BYTES to an FP32 model, shapes no array can hold, and calls that give up while queued: each is
INVALID_ARGUMENT (or the client's own status) at once, and the server keeps answering others."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import AsyncIterator, NamedTuple

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.conftest import free_port
from tests.hostile.models import echo_repository
from tests.inprocess import tiny_repository, triton_dataplane
from triserve.core.dataplane import DataPlane
from triserve.core.model import Model
from triserve.options import GRPCOptions, ServerOptions
from triserve.protocols.kserve import grpc as v2grpc
from triserve.protocols.tfserving import grpc as tfgrpc
from triserve.protos import tensorflow_pb2 as tf
from triserve.protos import tfserving_apis_pb2 as apis

pytestmark = pytest.mark.anyio

GARBAGE = b"\x0a\x05ab"  # field 1 says 5 bytes follow; 2 do: no message parses from this
GOOD_REQUESTS = 20
WAIT = 60  # seconds: only bounds a test whose server hangs; nothing here is timed
MiB = 1024 * 1024
A = np.arange(16, dtype=np.int32)
B = np.full(16, 3, dtype=np.int32)


class Served(NamedTuple):
    dataplane: DataPlane
    channel: grpc.aio.Channel  # to the KServe front end
    stub: service_pb2_grpc.GRPCInferenceServiceStub
    tf_channel: grpc.aio.Channel  # to the TF Serving front end
    predict: object  # Predict on the TF Serving front end, raw protos


@contextlib.asynccontextmanager
async def serving(dataplane: DataPlane, options: ServerOptions = ServerOptions()) -> AsyncIterator[Served]:
    ports = free_port(), free_port()
    frontends = [v2grpc.frontend(dataplane, options, ports[0]), tfgrpc.frontend(dataplane, options, ports[1])]
    for frontend in frontends:
        await frontend.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as channel, grpc.aio.insecure_channel(
            f"127.0.0.1:{ports[1]}"
        ) as tf_channel:
            predict = tf_channel.unary_unary(
                f"/{tfgrpc.PREDICTION_SERVICE}/Predict",
                request_serializer=apis.PredictRequest.SerializeToString,
                response_deserializer=apis.PredictResponse.FromString,
            )
            yield Served(dataplane, channel, service_pb2_grpc.GRPCInferenceServiceStub(channel), tf_channel, predict)
    finally:
        for frontend in frontends:
            await frontend.stop()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def served(tmp_path_factory) -> AsyncIterator[Served]:
    async with triton_dataplane(tiny_repository(tmp_path_factory.mktemp("models"))) as dataplane:
        async with serving(dataplane) as s:
            yield s


def simple_request(a: np.ndarray = A, b: np.ndarray = B) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="simple")
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(array.astype("<i4").tobytes())
    return request


def tf_tensor(array: np.ndarray) -> tf.TensorProto:
    proto = tf.TensorProto(dtype=tf.DT_INT32, tensor_content=array.astype("<i4").tobytes())
    proto.tensor_shape.dim.extend(tf.TensorShapeProto.Dim(size=d) for d in array.shape)
    return proto


def tf_simple_request() -> apis.PredictRequest:
    request = apis.PredictRequest()
    request.model_spec.name = "simple"
    request.inputs["INPUT0"].CopyFrom(tf_tensor(A.reshape(1, 16)))
    request.inputs["INPUT1"].CopyFrom(tf_tensor(B.reshape(1, 16)))
    return request


async def good_inference(served: Served) -> None:
    """One good inference and one health check, both answered correctly."""
    response = await served.stub.ModelInfer(simple_request())
    assert np.frombuffer(response.raw_output_contents[0], "<i4").tolist() == (A + B).tolist()
    assert (await served.stub.ServerLive(pb.ServerLiveRequest())).live


async def while_in_flight(served: Served, hostile: asyncio.Future) -> int:
    """Good requests sent while `hostile` is in flight: how many were answered before it was."""
    answered = 0
    for _ in range(GOOD_REQUESTS):
        await good_inference(served)
        if not hostile.done():
            answered += 1
    return answered


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await asyncio.wait_for(call, WAIT)
    return e.value


# -- bytes that are no protobuf ----------------------------------------------------------
def _methods() -> list[tuple[str, str, bool]]:
    """(service, method, streams) for every method of both APIs triserve serves."""
    kserve = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = [(kserve.full_name, m.name, m.client_streaming) for m in kserve.methods]
    methods += [(tfgrpc.PREDICTION_SERVICE, name, False) for name in ("Predict", "GetModelMetadata")]
    methods += [(tfgrpc.MODEL_SERVICE, name, False) for name in ("GetModelStatus", "HandleReloadConfigRequest")]
    return methods


@pytest.mark.parametrize("service, method, streams", _methods(), ids=lambda v: v if isinstance(v, str) and "." not in v else "")
async def test_bytes_that_are_no_message_are_invalid_argument_on_every_method(served, service, method, streams):
    channel = served.channel if service == v2grpc.SERVICE else served.tf_channel
    path = f"/{service}/{method}"
    if streams:
        call = channel.stream_stream(path)(iter([GARBAGE]))
        error = await rpc_error(_drain(call))
    else:
        error = await rpc_error(channel.unary_unary(path)(GARBAGE))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "the request is not a valid" in error.details() and "message" in error.details()
    await good_inference(served)


async def _drain(call) -> list:
    return [item async for item in call]


async def test_a_stream_that_sends_one_undecodable_message_ends_at_once_with_invalid_argument(served):
    """The client keeps its side open: the server ends the stream, after answering what came before."""
    call = served.channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer", response_deserializer=pb.ModelStreamInferResponse.FromString
    )()
    await call.write(simple_request().SerializeToString())
    first = await asyncio.wait_for(call.read(), WAIT)
    assert np.frombuffer(first.infer_response.raw_output_contents[0], "<i4").tolist() == (A + B).tolist()
    await call.write(GARBAGE)
    error = await rpc_error(call.read())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inference.ModelInferRequest" in error.details()
    await good_inference(served)


# -- 60 MiB of BYTES to an FP32 model ------------------------------------------------------
def _bytes_for_fp32(kind: str) -> tuple[str, bytes]:
    """(method path, message): about 60 MiB of BYTES for `scores` (FP32 INPUT [-1, 5])."""
    if kind == "TF Serving string_val":
        count = 30 * MiB  # 2 bytes per empty string on the wire
        request = apis.PredictRequest()
        request.model_spec.name = "scores"
        tensor = request.inputs["INPUT"]
        tensor.dtype = tf.DT_STRING
        tensor.tensor_shape.dim.extend([tf.TensorShapeProto.Dim(size=1), tf.TensorShapeProto.Dim(size=count)])
        tensor.string_val.extend([b""] * count)
        return f"/{tfgrpc.PREDICTION_SERVICE}/Predict", request.SerializeToString()
    request = pb.ModelInferRequest(model_name="scores")
    if kind == "raw contents":
        count = 15 * MiB  # empty strings, 4 length bytes each
        request.inputs.add(name="INPUT", datatype="BYTES", shape=[1, count])
        request.raw_input_contents.append(bytes(4 * count))
    else:
        count = 30 * MiB
        request.inputs.add(name="INPUT", datatype="BYTES", shape=[1, count]).contents.bytes_contents.extend(
            [b""] * count
        )
    return "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString()


@pytest.mark.parametrize("kind", ["raw contents", "typed contents", "TF Serving string_val"])
async def test_sixty_mebibytes_of_bytes_to_an_fp32_model_are_refused_while_others_are_answered(served, kind):
    path, data = _bytes_for_fp32(kind)
    channel = served.tf_channel if "TF" in kind else served.channel
    started = time.perf_counter()
    hostile = asyncio.ensure_future(channel.unary_unary(path)(data))
    answered = await while_in_flight(served, hostile)
    error = await rpc_error(hostile)
    print(f"\n{len(data) / MiB:.0f} MiB of BYTES ({kind}) refused in {time.perf_counter() - started:.2f} s;"
          f" {answered} of {GOOD_REQUESTS} good requests answered meanwhile")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inference input 'INPUT' data-type is 'BYTES', but model 'scores' expects 'FP32'" in error.details()


def echo_requests(count: int) -> tuple[pb.ModelInferRequest, apis.PredictRequest]:
    """`count` strings to `echo`, in typed contents (KServe) and in string_val (TF Serving)."""
    kserve = pb.ModelInferRequest(model_name="echo")
    kserve.inputs.add(name="TEXT", datatype="BYTES", shape=[1, count]).contents.bytes_contents.extend([b"x"] * count)
    tensor = tf.TensorProto(dtype=tf.DT_STRING, string_val=[b"x"] * count)
    tensor.tensor_shape.dim.extend([tf.TensorShapeProto.Dim(size=1), tf.TensorShapeProto.Dim(size=count)])
    tfserving = apis.PredictRequest()
    tfserving.model_spec.name = "echo"
    tfserving.inputs["TEXT"].CopyFrom(tensor)
    return kserve, tfserving


async def test_more_bytes_elements_than_allowed_are_refused_before_they_are_read(tmp_path):
    async with triton_dataplane(echo_repository(tmp_path)) as dataplane:
        async with serving(dataplane, ServerOptions(grpc=GRPCOptions(max_bytes_elements=4))) as served:
            kserve, tfserving = echo_requests(4)
            assert list((await served.stub.ModelInfer(kserve)).outputs[0].shape) == [1, 4]
            assert len((await served.predict(tfserving)).outputs["ECHO"].string_val) == 4
            for call in echo_requests(5):
                method = served.stub.ModelInfer if isinstance(call, pb.ModelInferRequest) else served.predict
                error = await rpc_error(method(call))
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "5 BYTES tensor elements, more than the 4 allowed in one gRPC request" in error.details()
            assert dataplane.resolve("echo").stats.inference_count == 2


# -- shapes no array can hold ---------------------------------------------------------------
OVERFLOWING = [[0, 2**63], [0, 2**62, 2**62], [2**62, 2**62]]


@pytest.mark.parametrize("shape", OVERFLOWING, ids=str)
async def test_shapes_no_array_can_hold_are_invalid_argument_on_the_kserve_api(served, shape):
    request = pb.ModelInferRequest(model_name="scores")
    request.inputs.add(name="INPUT", datatype="FP32", shape=[d if d < 2**63 else d - 2**64 for d in shape])
    request.raw_input_contents.append(b"")
    error = await rpc_error(served.stub.ModelInfer(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "input 'INPUT'" in error.details()


@pytest.mark.parametrize("shape", [[0, 2**62, 2**62], [2**62, 2**62], [2**31, 2**31, 2]], ids=str)
async def test_shapes_no_array_can_hold_are_invalid_argument_on_the_tfserving_api(served, shape):
    request = apis.PredictRequest()
    request.model_spec.name = "scores"
    tensor = request.inputs["INPUT"]
    tensor.dtype = tf.DT_FLOAT
    tensor.tensor_shape.dim.extend(tf.TensorShapeProto.Dim(size=d) for d in shape)
    error = await rpc_error(served.predict(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "input 'INPUT'" in error.details()


async def test_a_few_values_do_not_fill_a_tensor_larger_than_a_message(served):
    """TensorFlow repeats the last value to fill the shape; never beyond what a message holds."""
    request = apis.PredictRequest()
    request.model_spec.name = "simple"
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs[name]
        tensor.dtype = tf.DT_INT32
        tensor.int_val.append(1)
        tensor.tensor_shape.dim.extend(tf.TensorShapeProto.Dim(size=d) for d in (2**30, 16))
    error = await rpc_error(served.predict(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than the largest message" in error.details()


async def test_duplicate_outputs_are_invalid_argument(served):
    request = simple_request()
    request.outputs.add(name="OUTPUT0")
    request.outputs.add(name="OUTPUT0")
    error = await rpc_error(served.stub.ModelInfer(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output 'OUTPUT0' already exists in request" in error.details()
    tf_request = tf_simple_request()
    tf_request.output_filter.extend(["OUTPUT1", "OUTPUT1"])
    error = await rpc_error(served.predict(tf_request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output 'OUTPUT1' already exists in request" in error.details()


# -- calls that give up while their request is queued ---------------------------------------
class Held:
    """The model's one instance, held busy: each execution waits until the test releases it."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.release = threading.Event()
        self.started = asyncio.Event()
        loop = asyncio.get_running_loop()
        execute = model.scheduler._execute

        def held(run, batch, *rest):
            loop.call_soon_threadsafe(self.started.set)
            self.release.wait(WAIT)
            return execute(run, batch, *rest)

        model.scheduler._execute = held

    async def queued(self, count: int) -> None:
        """Wait until `count` requests are queued or running (a bounded wait on the model's own count)."""
        async with asyncio.timeout(WAIT):
            while self.model.stats.pending != count:
                await asyncio.sleep(0.01)


def _gives_up() -> list[str]:
    return ["kserve cancelled", "kserve deadline", "tfserving cancelled", "tfserving deadline"]


@pytest.mark.parametrize("how", _gives_up())
async def test_a_call_that_gives_up_while_queued_is_dropped_and_never_runs(tmp_path, how):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        async with serving(dataplane) as served:
            model = dataplane.resolve("simple")
            held = Held(model)
            first = asyncio.ensure_future(served.stub.ModelInfer(simple_request()))
            await asyncio.wait_for(held.started.wait(), WAIT)  # the instance is busy with `first`
            deadline = 0.2 if how.endswith("deadline") else None
            if how.startswith("kserve"):
                call = served.stub.ModelInfer(simple_request(), timeout=deadline)
            else:
                call = served.predict(tf_simple_request(), timeout=deadline)
            await held.queued(2)
            if how.endswith("cancelled"):
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
            else:
                error = await rpc_error(call)
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await held.queued(1)  # dropped from the queue while the instance is still busy
            assert model.stats.execution_count == 0
            held.release.set()
            response = await asyncio.wait_for(first, WAIT)
            assert np.frombuffer(response.raw_output_contents[0], "<i4").tolist() == (A + B).tolist()
            assert (model.stats.execution_count, model.stats.success.count, model.stats.pending) == (1, 1, 0)
