"""Triton's system shared memory extension: the registry's checks and words, and tensors read from
and written to POSIX shared memory regions over HTTP (the real ASGI app, tritonclient's own shm
helpers making the regions) and gRPC (the real grpc.aio server, tritonclient.grpc.aio)."""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import AsyncIterator, Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
import tritonclient.utils.shared_memory as shm_client
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port
from triserve.core.dataplane import DataPlane
from triserve.errors import Code, ServerError
from triserve.options import KServeOptions, ServerOptions
from triserve.protocols.kserve import grpc as v2grpc
from triserve.protocols.kserve import shared_memory
from triserve.protocols.kserve.rest import V2HTTP
from triserve.protocols.kserve.shared_memory import SystemSharedMemory

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)
SIZE = A.nbytes  # 64


@contextlib.contextmanager
def shm_object(size: int) -> Iterator[tuple[str, str]]:
    """A POSIX shared memory object: (key as clients write it, its /dev/shm path)."""
    name = f"triserve-test-{uuid.uuid4().hex}"
    path = os.path.join("/dev/shm", name)
    with open(path, "wb") as f:
        f.truncate(size)
    try:
        yield "/" + name, path
    finally:
        os.unlink(path)


@contextlib.contextmanager
def client_region(name: str, size: int) -> Iterator[object]:
    """A region made by tritonclient's own helper, as Triton's examples make them."""
    key = f"/triserve-test-{uuid.uuid4().hex}"
    handle = shm_client.create_shared_memory_region(name, key, size)
    try:
        yield handle, key
    finally:
        shm_client.destroy_shared_memory_region(handle)


def error_of(call, *args) -> ServerError:
    with pytest.raises(ServerError) as e:
        call(*args)
    return e.value


# -- the registry ---------------------------------------------------------------------------------
def test_registered_regions_are_listed_with_their_key_offset_and_size():
    registry = SystemSharedMemory(allow_client=True)
    with shm_object(8192) as (key, _):
        registry.register("whole", key, 0, 8192)
        registry.register("tail", key, 4097, 100)  # an offset that is no page boundary
        assert registry.status() == [
            {"name": "whole", "key": key, "offset": 0, "byte_size": 8192},
            {"name": "tail", "key": key, "offset": 4097, "byte_size": 100},
        ]
        assert registry.status("tail") == [{"name": "tail", "key": key, "offset": 4097, "byte_size": 100}]
        # both name the same bytes: what is written through one is read through the other
        registry.view("whole", 4097, 4)[:] = b"abcd"
        assert bytes(registry.view("tail", 0, 4)) == b"abcd"
        registry.unregister("tail")
        assert [r["name"] for r in registry.status()] == ["whole"]
        registry.unregister()
        assert registry.status() == []


def test_registering_has_tritons_checks_and_words():
    registry = SystemSharedMemory(allow_client=True)
    with shm_object(128) as (key, _):
        registry.register("r", key, 0, 128)
        e = error_of(registry.register, "r", key, 0, 64)
        assert (e.code, e.message) == (Code.ALREADY_EXISTS, "shared memory region 'r' already in manager")
        e = error_of(registry.register, "big", key, 64, 65)
        assert (e.code, e.message) == (Code.INVALID_ARG, "failed to register shared memory region 'big': invalid args")
    e = error_of(registry.register, "gone", "/triserve-test-no-such-object", 0, 8)
    assert e.message == "Unable to open shared memory region: '/triserve-test-no-such-object'"
    e = error_of(registry.register, "slashes", "///", 0, 8)
    assert e.message == "cannot register shared memory region 'slashes' - invalid shm key '///'"
    e = error_of(registry.register, "reserved", "/triton_python_backend_shm_region_1", 0, 8)
    assert "contains the reserved prefix 'triton_python_backend_shm_region_'" in e.message
    # a key is one shared memory object, never a path out of /dev/shm
    assert error_of(registry.register, "escape", "/../etc/passwd", 0, 8).message.startswith("Unable to open")
    e = error_of(registry.status, "gone")
    assert (e.code, e.message) == (Code.NOT_FOUND, "Unable to find system shared memory region: 'gone'")


def test_a_tensors_location_is_checked_against_the_region():
    registry = SystemSharedMemory(allow_client=True)
    with shm_object(128) as (key, _):
        registry.register("r", key, 0, 64)
        assert len(registry.view("r", 0, 64)) == 64 and len(registry.view("r", 60, 4)) == 4
        e = error_of(registry.view, "nope", 0, 4)
        assert (e.code, e.message) == (Code.NOT_FOUND, "Unable to find shared memory region: 'nope'")
        assert error_of(registry.view, "r", 64, 0).message == "Invalid offset for shared memory region: 'r'"
        assert error_of(registry.view, "r", 60, 5).message == "Invalid offset + byte size for shared memory region: 'r'"


def test_nothing_registers_unless_the_server_allows_client_shared_memory():
    registry = SystemSharedMemory()
    with shm_object(64) as (key, _):
        e = error_of(registry.register, "r", key, 0, 64)
    assert e.code == Code.UNSUPPORTED
    assert e.message == "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
    assert registry.status() == []


def test_unregistering_a_region_an_inflight_request_reads_keeps_the_bytes_it_holds():
    registry = SystemSharedMemory(allow_client=True)
    with shm_object(64) as (key, path):
        registry.register("r", key, 0, 64)
        with open(path, "r+b") as f:
            f.write(A.tobytes())
        view = shared_memory.input_view(registry, "r", 0, 64)
        tensor = np.frombuffer(view, dtype=np.int32)
        registry.unregister("r")
        np.testing.assert_array_equal(tensor, A.ravel())  # still mapped: the view holds it
        assert not tensor.flags.writeable  # a model never writes the client's input region


# -- HTTP -------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def http_client(dataplane: DataPlane, registry: SystemSharedMemory) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=V2HTTP(dataplane, shm=registry).app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def shm_request(offset_out: int = 0, out_size: int = SIZE, binary: bool = False) -> dict:
    return {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16],
             "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": SIZE}},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16],
             "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": SIZE, "shared_memory_offset": SIZE}},
        ],
        "outputs": [
            {"name": "OUTPUT0", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": out_size,
                                                "shared_memory_offset": offset_out, "binary_data": binary}},
            {"name": "OUTPUT1", "parameters": {"binary_data": False}},
        ],
    }


@pytest.mark.anyio
async def test_http_inputs_come_from_and_outputs_go_to_registered_regions(dataplane):
    registry = SystemSharedMemory(allow_client=True)
    async with http_client(dataplane, registry) as client:
        with client_region("in", 2 * SIZE) as (ins, in_key), client_region("out", 2 * SIZE) as (outs, out_key):
            shm_client.set_shared_memory_region(ins, [A, B])
            for name, key in (("in", in_key), ("out", out_key)):
                response = await client.post(f"/v2/systemsharedmemory/region/{name}/register",
                                             json={"key": key, "offset": 0, "byte_size": 2 * SIZE})
                assert response.status_code == 200, response.text
            status = (await client.get("/v2/systemsharedmemory/status")).json()
            assert status == [{"name": "in", "key": in_key, "offset": 0, "byte_size": 2 * SIZE},
                              {"name": "out", "key": out_key, "offset": 0, "byte_size": 2 * SIZE}]
            assert (await client.get("/v2/systemsharedmemory/region/out/status")).json() == status[1:]

            response = await client.post("/v2/models/simple/infer", json=shm_request(offset_out=SIZE))
            assert response.status_code == 200, response.text
            out0, out1 = response.json()["outputs"]
            # the output in shared memory is answered by its metadata only; the other as JSON
            assert out0 == {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]}
            assert out1["data"] == (A - B).ravel().tolist()
            got = shm_client.get_contents_as_numpy(outs, np.int32, [1, 16], offset=SIZE)
            np.testing.assert_array_equal(got, A + B)

            # the client rewrites its input region and asks again: the new values count
            shm_client.set_shared_memory_region(ins, [B, A])
            response = await client.post("/v2/models/simple/infer", json=shm_request())
            assert response.json()["outputs"][1]["data"] == (B - A).ravel().tolist()
            np.testing.assert_array_equal(shm_client.get_contents_as_numpy(outs, np.int32, [1, 16]), A + B)

            assert (await client.post("/v2/systemsharedmemory/region/in/unregister")).status_code == 200
            assert [r["name"] for r in (await client.get("/v2/systemsharedmemory/status")).json()] == ["out"]
            assert (await client.post("/v2/systemsharedmemory/unregister")).status_code == 200
            assert (await client.get("/v2/systemsharedmemory/status")).json() == []


@pytest.mark.anyio
async def test_http_shared_memory_errors_are_tritons(dataplane):
    registry = SystemSharedMemory(allow_client=True)
    async with http_client(dataplane, registry) as client:

        async def error(method: str, path: str, **kwargs) -> tuple[int, str]:
            response = await client.request(method, path, **kwargs)
            assert response.headers["content-type"] == "application/json"
            return response.status_code, response.json()["error"]

        with client_region("in", 2 * SIZE) as (ins, in_key), client_region("out", SIZE) as (_, out_key):
            register = "/v2/systemsharedmemory/region/{}/register"
            assert (await client.post(register.format("in"), json={"key": in_key, "byte_size": 2 * SIZE})).status_code == 200
            assert await error("POST", register.format("in"), json={"key": in_key, "byte_size": 8}) == (
                400, "shared memory region 'in' already in manager")
            assert await error("POST", register.format("x"), json={"key": in_key, "byte_size": 4 * SIZE}) == (
                400, "failed to register shared memory region 'x': invalid args")
            assert await error("POST", register.format("x"), json={"byte_size": 4}) == (
                400, "Shared memory register request has no 'key' field")
            assert await error("POST", register.format("x"), json={"key": in_key}) == (
                400, "Shared memory register request has no 'byte_size' field")
            assert await error("POST", "/v2/systemsharedmemory/register", json={"key": in_key, "byte_size": 4}) == (
                400, "'region name' is necessary to register system shared memory region")
            assert await error("GET", "/v2/systemsharedmemory/region/nope/status") == (
                404, "Unable to find system shared memory region: 'nope'")
            assert await error("GET", register.format("x")) == (405, "Method Not Allowed")
            assert (await client.post(register.format("out"), json={"key": out_key, "byte_size": SIZE})).status_code == 200

            infer = "/v2/models/simple/infer"
            unknown = shm_request()
            unknown["inputs"][0]["parameters"]["shared_memory_region"] = "nope"
            assert await error("POST", infer, json=unknown) == (404, "Unable to find shared memory region: 'nope'")
            past = shm_request()
            past["inputs"][1]["parameters"]["shared_memory_offset"] = SIZE + 1
            assert await error("POST", infer, json=past) == (
                400, "Invalid offset + byte size for shared memory region: 'in'")
            both = shm_request()
            both["inputs"][0]["data"] = A.ravel().tolist()
            assert await error("POST", infer, json=both) == (
                400, "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters',"
                     " 'shared_memory_region' in 'parameters'. But set 'data' 'shared_memory_region'")
            too_small = shm_request(out_size=SIZE - 4)
            assert await error("POST", infer, json=too_small) == (
                400, "shared memory size specified with the request for output 'OUTPUT0' (60 bytes) should be at"
                     " least 64 bytes to hold the results")
            binary = shm_request(binary=True)
            assert await error("POST", infer, json=binary) == (
                400, "Output can't set both 'shared_memory_region' and 'binary_data'")
            short = shm_request()
            short["inputs"][0]["parameters"]["shared_memory_byte_size"] = SIZE - 4
            status, message = await error("POST", infer, json=short)
            assert status == 400 and "INPUT0" in message  # the data does not fill the shape

        # CUDA shared memory: Triton's answers without GPUs
        assert await error("POST", "/v2/cudasharedmemory/region/g/register",
                           json={"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 8}) == (
            400, "failed to register CUDA shared memory region: 'g', GPUs not supported")
        assert (await client.get("/v2/cudasharedmemory/status")).json() == []
        assert (await client.post("/v2/cudasharedmemory/unregister")).status_code == 200


@pytest.mark.anyio
async def test_http_registration_is_refused_unless_allowed(dataplane):
    async with http_client(dataplane, SystemSharedMemory()) as client:
        with shm_object(64) as (key, _):
            response = await client.post("/v2/systemsharedmemory/region/r/register", json={"key": key, "byte_size": 64})
        assert response.status_code == 501
        assert "--allow-client-shm=true" in response.json()["error"]
        assert (await client.get("/v2/systemsharedmemory/status")).json() == []


# -- gRPC -------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def grpc_client(dataplane: DataPlane) -> AsyncIterator[aioclient.InferenceServerClient]:
    port = free_port()
    frontend = v2grpc.frontend(dataplane, ServerOptions(kserve=KServeOptions(allow_client_shm=True)), port)
    await frontend.start()
    try:
        async with aioclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            yield client
    finally:
        await frontend.stop()


@pytest.mark.anyio
async def test_grpc_inputs_come_from_and_outputs_go_to_registered_regions(dataplane):
    async with grpc_client(dataplane) as client:
        with client_region("gin", 2 * SIZE) as (ins, in_key), client_region("gout", 2 * SIZE) as (outs, out_key):
            shm_client.set_shared_memory_region(ins, [A, B])
            await client.register_system_shared_memory("gin", in_key, 2 * SIZE)
            await client.register_system_shared_memory("gout", out_key, 2 * SIZE)
            status = await client.get_system_shared_memory_status(as_json=True)
            assert status["regions"]["gin"] == {"name": "gin", "key": in_key, "byte_size": str(2 * SIZE)}

            inputs = [aioclient.InferInput("INPUT0", [1, 16], "INT32"), aioclient.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_shared_memory("gin", SIZE)
            inputs[1].set_shared_memory("gin", SIZE, offset=SIZE)
            outputs = [aioclient.InferRequestedOutput("OUTPUT0"), aioclient.InferRequestedOutput("OUTPUT1")]
            outputs[0].set_shared_memory("gout", SIZE)
            outputs[1].set_shared_memory("gout", SIZE, offset=SIZE)
            result = await client.infer("simple", inputs, outputs=outputs)
            assert result.get_output("OUTPUT0").shape == [1, 16]
            np.testing.assert_array_equal(shm_client.get_contents_as_numpy(outs, np.int32, [1, 16]), A + B)
            np.testing.assert_array_equal(shm_client.get_contents_as_numpy(outs, np.int32, [1, 16], offset=SIZE), A - B)

            # one input in shared memory, the other sent as raw contents; outputs answered inline
            mixed = [aioclient.InferInput("INPUT0", [1, 16], "INT32"), aioclient.InferInput("INPUT1", [1, 16], "INT32")]
            mixed[0].set_data_from_numpy(B)
            mixed[1].set_shared_memory("gin", SIZE)  # A
            result = await client.infer("simple", mixed)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), B - A)

            with pytest.raises(InferenceServerException) as e:
                await client.register_system_shared_memory("gin", in_key, SIZE)
            assert e.value.status() == "StatusCode.ALREADY_EXISTS"
            assert e.value.message() == "shared memory region 'gin' already in manager"
            bad = [aioclient.InferInput("INPUT0", [1, 16], "INT32"), aioclient.InferInput("INPUT1", [1, 16], "INT32")]
            bad[0].set_shared_memory("gin", SIZE, offset=2 * SIZE)
            bad[1].set_shared_memory("nope", SIZE)
            with pytest.raises(InferenceServerException) as e:
                await client.infer("simple", bad)
            assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert e.value.message() == "Invalid offset for shared memory region: 'gin'"

            await client.unregister_system_shared_memory("gout")
            assert list((await client.get_system_shared_memory_status(as_json=True))["regions"]) == ["gin"]
            await client.unregister_system_shared_memory()
            assert (await client.get_system_shared_memory_status(as_json=True)) == {}


@pytest.mark.anyio
async def test_grpc_shared_memory_parameters_are_checked_as_triton(dataplane):
    port = free_port()
    frontend = v2grpc.frontend(dataplane, ServerOptions(kserve=KServeOptions(allow_client_shm=True)), port)
    await frontend.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = v2grpc.service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="simple")
            for name in ("INPUT0", "INPUT1"):
                request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            request.inputs[0].parameters["shared_memory_region"].int64_param = 1
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.ModelInfer(request)
            assert e.value.details() == (
                "invalid value type for 'shared_memory_region' parameter for tensor 'INPUT0', expected string_param."
            )
            request.inputs[0].ClearField("parameters")
            request.inputs[0].parameters["shared_memory_offset"].int64_param = 0
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.ModelInfer(request)
            assert e.value.details() == (
                "'shared_memory_offset' can not be specified without 'shared_memory_region' parameter for tensor 'INPUT0'"
            )
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.CudaSharedMemoryRegister(pb.CudaSharedMemoryRegisterRequest(name="g", byte_size=8))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details() == "failed to register CUDA shared memory region: 'g', GPUs not supported"
    finally:
        await frontend.stop()
