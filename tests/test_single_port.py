"""--single-port: every HTTP API on one port routed by path, every gRPC service on one gRPC port;
listening while models load (readiness 503 until they are ready); readiness 503 at once on stop.
In-process: the real Server on real sockets in the test's event loop."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import InferInput

from tests.conftest import free_port
from tests.inprocess import doubler_onnx, tiny_repository
from triserve.archiver import write_archive
from triserve.options import FRONTENDS, ArchiveOptions, ServerOptions
from triserve.server import Server
from triserve.shared_listener import single_port_target

pytestmark = pytest.mark.anyio


def test_paths_go_to_the_api_they_belong_to():
    assert single_port_target("/v2") == "http"
    assert single_port_target("/v2/models/simple/infer") == "http"
    assert single_port_target("/v1/models/simple:predict") == "tfserving_rest"
    assert single_port_target("/metrics") == "metrics"
    assert single_port_target("/predictions/twice") == "torchserve_inference"
    assert single_port_target("/ping") == "torchserve_inference"
    assert single_port_target("/v2x") == "torchserve_inference"  # only /v2 and below are v2's


def _options(tmp_path, single: int, grpc_port: int = 0) -> ServerOptions:
    repo = tiny_repository(tmp_path / "repo")
    doubler_onnx(tmp_path / "twice.onnx")
    write_archive("twice", "1.0", "base_handler", tmp_path / "store", serialized_file=str(tmp_path / "twice.onnx"))
    ports = {name: 0 for name in FRONTENDS} | {"grpc": grpc_port}
    return ServerOptions(model_repositories=(repo,), ports=ports, single_port=single, exit_timeout_secs=5,
                         archives=ArchiveOptions(model_store=tmp_path / "store", models=("twice.mar",)))


async def _status(client: httpx.AsyncClient, path: str) -> int | None:
    try:
        return (await client.get(path)).status_code
    except httpx.TransportError:
        return None


async def _until(client: httpx.AsyncClient, path: str, status: int, running: asyncio.Task) -> None:
    async with asyncio.timeout(120):  # bounds a hang only
        while await _status(client, path) != status:
            assert not running.done(), running.result()
            await asyncio.sleep(0.05)


SIMPLE_BODY = {"inputs": [
    {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
    {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
]}


async def test_every_http_api_on_one_port_and_every_grpc_service_on_one_grpc_port(tmp_path, caplog):
    caplog.set_level("INFO", logger="triserve")
    port, grpc_port = free_port(), free_port()
    server = Server(_options(tmp_path, port, grpc_port))
    running = asyncio.create_task(server.run())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            await _until(client, "/v2/health/ready", 200, running)
            infer = await client.post("/v2/models/simple/infer", json=SIMPLE_BODY)
            assert infer.status_code == 200, infer.text
            outputs = {o["name"]: o["data"] for o in infer.json()["outputs"]}
            assert outputs["OUTPUT0"] == [i + 1 for i in range(16)]
            tf_status = await client.get("/v1/models/simple")  # TF Serving REST
            assert tf_status.status_code == 200, tf_status.text
            assert tf_status.json()["model_version_status"][0]["state"] == "AVAILABLE"
            tf_predict = await client.post("/v1/models/doubler:predict", json={"instances": [[1.0, 2.0, 3.0]]})
            assert tf_predict.status_code == 200, tf_predict.text
            assert tf_predict.json()["predictions"] == [[2.0, 4.0, 6.0]]
            ping = await client.get("/ping")  # TorchServe inference
            assert ping.status_code == 200 and ping.json() == {"status": "Healthy"}
            predicted = await client.post("/predictions/twice", json={"x": [1.0, 2.0, 3.0]})
            assert predicted.status_code == 200, predicted.text
            assert "[2.0, 4.0, 6.0]" in json.dumps(predicted.json())
            missing = await client.post("/predictions/nope", content=b"1")
            assert missing.status_code == 404  # TorchServe's own answer
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200 and 'nv_inference_request_success{model="simple",version="1"} 1' in metrics.text
            assert (await client.get("/models")).status_code == 404  # management is not on the single port
        triton = aioclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            assert await triton.is_server_ready()
            a, b = InferInput("INPUT0", [1, 16], "INT32"), InferInput("INPUT1", [1, 16], "INT32")
            a.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
            b.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
            result = await triton.infer("simple", [a, b])
            assert result.as_numpy("OUTPUT1").tolist() == [[i - 1 for i in range(16)]]
        finally:
            await triton.close()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            # TF Serving's ModelService on the same port: GetModelStatusRequest{model_spec{name: "simple"}}
            spec = b"\x0a" + bytes([len(b"simple")]) + b"simple"
            status = await channel.unary_unary("/tensorflow.serving.ModelService/GetModelStatus")(
                b"\x0a" + bytes([len(spec)]) + spec)
            assert status  # a GetModelStatusResponse with the version's status
            methods = {"/org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping"}
            for method in methods:  # TorchServe gRPC inference on the same port
                assert await channel.unary_unary(method)(b"")
    finally:
        server.stop()
        assert await running == 0
    titles = [(title, p) for title, p, _ in server.frontends]
    assert titles[0] == ("KServe v2 HTTP and TF Serving REST and TorchServe inference and Triton metrics", port)
    assert titles[1] == ("KServe v2 gRPC and TF Serving gRPC and TorchServe gRPC inference", grpc_port)
    assert len(titles) == 2  # TorchServe management's ports are 0 here: off


async def test_listens_while_models_load_and_is_ready_only_after(tmp_path):
    port, grpc_port = free_port(), free_port()
    server = Server(_options(tmp_path, port, grpc_port))
    loading, release = asyncio.Event(), asyncio.Event()
    start = server.manager.start

    async def held_start(names):  # the models load only once the test has probed
        loading.set()
        await release.wait()
        return await start(names)

    server.manager.start = held_start
    running = asyncio.create_task(server.run())
    try:
        await loading.wait()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            assert await _status(client, "/v2/health/ready") == 503
            assert await _status(client, "/v2/health/live") == 200
            assert await _status(client, "/ping") == 500  # TorchServe's Unhealthy
            triton = aioclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            try:
                assert not await triton.is_server_ready()
            finally:
                await triton.close()
            release.set()
            await _until(client, "/v2/health/ready", 200, running)
            assert await _status(client, "/v2/health/live") == 200
    finally:
        release.set()
        server.stop()
        assert await running == 0


async def test_readiness_is_503_as_soon_as_the_server_is_asked_to_stop(tmp_path):
    port = free_port()
    server = Server(_options(tmp_path, port))
    running = asyncio.create_task(server.run())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        await _until(client, "/v2/health/ready", 200, running)
    app = server.frontends[0][2].server.config.app  # the single port's router, asked directly
    server.stop()  # what SIGTERM calls
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as direct:
        assert (await direct.get("/v2/health/ready")).status_code == 503
        assert (await direct.get("/v2/health/live")).status_code == 200
    assert await running == 0


async def test_the_grace_period_reaches_every_listener(tmp_path):
    port, grpc_port = free_port(), free_port()
    server = Server(_options(tmp_path, port, grpc_port))
    running = asyncio.create_task(server.run())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        await _until(client, "/v2/health/ready", 200, running)
    http, grpc_frontend = server.frontends[0][2], server.frontends[1][2]
    assert http.server.config.timeout_graceful_shutdown == 5
    assert grpc_frontend.grace == 5
    server.stop()
    assert await running == 0
