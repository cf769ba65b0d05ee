"""TorchServe's gRPC APIs in-process: the real grpc.aio servers on free ports, called with stubs
built from triserve's protos (TorchServe's packages, services and field numbers)."""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator

import grpc
import pytest
from google.protobuf import empty_pb2

from tests.conftest import free_port
from tests.protocols.torchserve.support import ROW, SUM, archive_dataplane
from triserve.options import ArchiveOptions, ServerOptions, TorchServeOptions
from triserve.protocols.torchserve import grpc as ts_grpc
from triserve.protocols.torchserve.auth import auth_for
from triserve.protos import torchserve_inference_pb2 as inference
from triserve.protos import torchserve_management_pb2 as management

pytestmark = pytest.mark.anyio

INFERENCE = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/"
MANAGEMENT = "/org.pytorch.serve.grpc.management.ManagementAPIsService/"


class Stub:
    """Calls by TorchServe's method paths, as its generated stubs make them."""

    def __init__(self, channel: grpc.aio.Channel, service: str, metadata: tuple = ()) -> None:
        self.channel, self.service, self.metadata = channel, service, metadata

    async def __call__(self, method: str, request: Any, response: Any) -> Any:
        call = self.channel.unary_unary(self.service + method, request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=response.FromString)
        return await call(request, metadata=self.metadata)

    def stream(self, method: str, request: Any, response: Any) -> Any:
        call = self.channel.unary_stream(self.service + method, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=response.FromString)
        return call(request, metadata=self.metadata)


@contextlib.asynccontextmanager
async def servers(dataplane, **torchserve: Any) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    options = ServerOptions(torchserve=TorchServeOptions(**{"enable_model_api": True, **torchserve}))
    ports = free_port(), free_port()
    fronts = [ts_grpc.inference_frontend(dataplane, options, ports[0]),
              ts_grpc.management_frontend(dataplane, options, ports[1])]
    for front in fronts:
        await front.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as i, \
                grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}") as m:
            yield i, m
    finally:
        for front in fronts:
            await front.stop()


def row_input() -> dict[str, bytes]:
    return {"data": json.dumps(ROW).encode()}


async def test_ping_and_predictions(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with servers(dataplane) as (i, _):
            stub = Stub(i, INFERENCE)
            health = await stub("Ping", empty_pb2.Empty(), inference.TorchServeHealthResponse)
            answer = await stub("Predictions", inference.PredictionsRequest(model_name="adder", input=row_input()),
                                inference.PredictionResponse)
            versioned = await stub("Predictions", inference.PredictionsRequest(
                model_name="adder", model_version="1.0", input=row_input()), inference.PredictionResponse)
            streamed = [r async for r in stub.stream("StreamPredictions", inference.PredictionsRequest(
                model_name="adder", input=row_input()), inference.PredictionResponse)]
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub("Predictions", inference.PredictionsRequest(model_name="nope", input=row_input()),
                           inference.PredictionResponse)
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub("Predictions", inference.PredictionsRequest(model_name="adder", input={"data": b"[1,"}),
                           inference.PredictionResponse)
            with pytest.raises(grpc.aio.AioRpcError) as stream_unknown:
                async for _ in stub.stream("StreamPredictions", inference.PredictionsRequest(model_name="nope"),
                                           inference.PredictionResponse):
                    pass
    assert json.loads(health.health) == {"status": "Healthy"}
    assert json.loads(answer.prediction)["OUTPUT0"] == SUM and json.loads(versioned.prediction)["OUTPUT0"] == SUM
    assert len(streamed) == 1 and json.loads(streamed[0].prediction)["OUTPUT0"] == SUM
    assert unknown.value.code() == grpc.StatusCode.INTERNAL and "Model not found: nope" in unknown.value.details()
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stream_unknown.value.code() == grpc.StatusCode.INTERNAL


async def test_stateful_sequence_streams_are_refused_clearly(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with servers(dataplane) as (i, _):
            call = i.stream_stream(INFERENCE + "StreamPredictions2", request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=inference.PredictionResponse.FromString)
            stream = call()
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # the write, or the read, sees the end
                await stream.write(inference.PredictionsRequest(model_name="adder", input=row_input()))
                await stream.read()
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_management_register_describe_scale_default_unregister(store):
    async with archive_dataplane(store) as dataplane:
        async with servers(dataplane) as (i, m):
            stub, infer = Stub(m, MANAGEMENT), Stub(i, INFERENCE)
            registered = await stub("RegisterModel", management.RegisterModelRequest(
                url="adder.mar", initial_workers=1, synchronous=True), management.ManagementResponse)
            second = await stub("RegisterModel", management.RegisterModelRequest(url="adder_v2.mar", synchronous=True),
                                management.ManagementResponse)
            listed = await stub("ListModels", management.ListModelsRequest(), management.ManagementResponse)
            described = await stub("DescribeModel", management.DescribeModelRequest(model_name="adder", model_version="all"),
                                   management.ManagementResponse)
            scaled = await stub("ScaleWorker", management.ScaleWorkerRequest(model_name="adder", min_worker=2,
                                                                            synchronous=True), management.ManagementResponse)
            default = await stub("SetDefault", management.SetDefaultRequest(model_name="adder", model_version="2.0"),
                                 management.ManagementResponse)
            product = await infer("Predictions", inference.PredictionsRequest(model_name="adder", input=row_input()),
                                  inference.PredictionResponse)
            errors = {}
            for name, method, request in (
                ("no_url", "RegisterModel", management.RegisterModelRequest()),
                ("runtime", "RegisterModel", management.RegisterModelRequest(url="adder.mar", runtime="python4")),
                ("conflict", "RegisterModel", management.RegisterModelRequest(url="adder.mar")),
                ("describe", "DescribeModel", management.DescribeModelRequest(model_name="nope")),
                ("inverted", "ScaleWorker", management.ScaleWorkerRequest(model_name="adder", min_worker=2, max_worker=1)),
                ("version", "SetDefault", management.SetDefaultRequest(model_name="adder", model_version="0.0")),
                ("unregister", "UnregisterModel", management.UnregisterModelRequest(model_name="nope")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub(method, request, management.ManagementResponse)
                errors[name] = e.value.code()
            gone = await stub("UnregisterModel", management.UnregisterModelRequest(model_name="adder"),
                              management.ManagementResponse)
    assert registered.msg == 'Model "adder" Version: 1.0 registered with 1 initial workers'
    # a second version runs beside the first, with the model's workers
    assert second.msg == 'Model "adder" Version: 2.0 registered with 1 initial workers'
    assert json.loads(listed.msg) == {"models": [{"modelName": "adder", "modelUrl": "adder.mar"}]}
    assert [d["modelVersion"] for d in json.loads(described.msg)] == ["1.0", "2.0"]
    assert scaled.msg == "Workers scaled to 2 for model: adder"
    assert default.msg == 'Default version successfully updated for model "adder" to "2.0"'
    assert json.loads(product.prediction)["OUTPUT0"] == [a * b for a, b in zip(ROW["INPUT0"], ROW["INPUT1"])]
    C = grpc.StatusCode
    assert errors == {"no_url": C.INVALID_ARGUMENT, "runtime": C.INVALID_ARGUMENT, "conflict": C.ABORTED,
                      "describe": C.NOT_FOUND, "inverted": C.INVALID_ARGUMENT, "version": C.NOT_FOUND,
                      "unregister": C.NOT_FOUND}
    assert gone.msg == 'Model "adder" unregistered'


async def test_register_and_unregister_need_the_model_api(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with servers(dataplane, enable_model_api=False) as (_, m):
            stub = Stub(m, MANAGEMENT)
            with pytest.raises(grpc.aio.AioRpcError) as register:
                await stub("RegisterModel", management.RegisterModelRequest(url="adder_v2.mar"), management.ManagementResponse)
            with pytest.raises(grpc.aio.AioRpcError) as unregister:
                await stub("UnregisterModel", management.UnregisterModelRequest(model_name="adder"),
                           management.ManagementResponse)
    assert register.value.code() == unregister.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert dataplane.is_registered("adder")


async def test_token_authorization_as_on_http(store, tmp_path):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        options = dict(enable_token_auth=True, token_key_file=tmp_path / "key_file.json")
        async with servers(dataplane, **options) as (i, m):
            keys = json.loads((tmp_path / "key_file.json").read_text())
            auth = auth_for(dataplane, TorchServeOptions(**options))
            assert auth is not None
            request = inference.PredictionsRequest(model_name="adder", input=row_input())
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await Stub(i, INFERENCE)("Predictions", request, inference.PredictionResponse)
            with pytest.raises(grpc.aio.AioRpcError) as wrong_key:  # the management key is not the inference key
                await Stub(i, INFERENCE, (("authorization", f"Bearer {keys['management']['key']}"),))(
                    "Predictions", request, inference.PredictionResponse)
            answer = await Stub(i, INFERENCE, (("authorization", f"Bearer {keys['inference']['key']}"),))(
                "Predictions", request, inference.PredictionResponse)
            listed = await Stub(m, MANAGEMENT, (("authorization", f"Bearer {keys['management']['key']}"),))(
                "ListModels", management.ListModelsRequest(), management.ManagementResponse)
    assert missing.value.code() == wrong_key.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "Token Authorization failed" in missing.value.details()
    assert json.loads(answer.prediction)["OUTPUT0"] == SUM and "adder" in listed.msg
