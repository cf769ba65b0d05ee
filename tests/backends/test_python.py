"""The Python backend (backends/python/): model.py in its own process, tensors in shared memory,
BLS through the core, and failures that stay with their request.

Process-spawning tests are few (each instance is a process): one repository holds the failure
models, one the BLS model.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tests.inprocess import simple_onnx, triton_dataplane
from triserve.backends.python import config_json, shm
from triserve.backends.python import triton_python_backend_utils as pb_utils
from triserve.core.types import InferRequest
from triserve.errors import ServerError
from triserve.protocols.kserve.rest import V2HTTP

ADD_SUB = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.dtype = pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, "SUM")["data_type"])
        self.args = args

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", (a + b).astype(self.dtype)),
                pb_utils.Tensor("NAME", np.array([self.args["model_name"].encode()] , dtype=np.object_)),
            ]))
        return responses
'''

FAILING = {
    "raises": 'raise ValueError("no good input")',
    "exits": "os._exit(1)",
    "hangs": "time.sleep(3600)",
}

FAILING_MODEL = '''
import os, time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        {body}
'''


def _config(name: str, extra: str = "", inputs: tuple[str, ...] = ("A", "B")) -> str:
    tensors = "".join(f'input [{{ name: "{i}" data_type: TYPE_FP32 dims: [ 4 ] }}]\n' for i in inputs)
    return textwrap.dedent(f'''
        name: "{name}"
        backend: "python"
        {tensors}
        output [{{ name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] }}]
        output [{{ name: "NAME" data_type: TYPE_STRING dims: [ 1 ] }}]
        instance_group [{{ kind: KIND_CPU count: 1 }}]
        {extra}
    ''')


def _model(root: Path, name: str, source: str, config: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(source)
    (root / name / "config.pbtxt").write_text(config)


def _body(a: list[float], b: list[float]) -> dict:
    return {"inputs": [
        {"name": "A", "shape": [4], "datatype": "FP32", "data": a},
        {"name": "B", "shape": [4], "datatype": "FP32", "data": b},
    ]}


# -- no processes ---------------------------------------------------------------------------
def test_shared_memory_round_trip_keeps_values_shapes_and_bytes():
    tensors = [
        ("f", np.arange(12, dtype=np.float32).reshape(3, 4)),
        ("s", np.array([[b"ab", "c\u00e9"], [b"", b"xyz"]], dtype=np.object_)),
        ("e", np.zeros((0, 2), dtype=np.int64)),
        ("b", np.array([True, False])),
    ]
    packed = shm.pack(tensors)
    assert packed.segment is not None
    out = shm.unpack(packed)
    np.testing.assert_array_equal(out["f"], tensors[0][1])
    assert out["s"].tolist() == [[b"ab", "c\u00e9".encode()], [b"", b"xyz"]]
    assert out["e"].shape == (0, 2) and out["e"].dtype == np.int64
    assert out["b"].dtype == np.bool_ and out["b"].tolist() == [True, False]
    # the segment is gone once mapped: nothing is left in /dev/shm
    assert not (Path(shm._DIR) / packed.segment).exists()


def test_config_json_has_numbers_and_config_names():
    config = mc.ModelConfig(name="m", backend="python", max_batch_size=2)
    config.input.add(name="A", data_type=mc.TYPE_FP32, dims=[-1, 4])
    config.dynamic_batching.max_queue_delay_microseconds = 100
    value = json.loads(config_json(config))
    assert {k: value["input"][0][k] for k in ("name", "data_type", "dims")} == {"name": "A", "data_type": "TYPE_FP32", "dims": [-1, 4]}
    assert value["output"] == [] and value["input"][0]["optional"] is False  # defaults too, as Triton writes them
    assert value["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert pb_utils.get_input_config_by_name(value, "A")["dims"] == [-1, 4]


def test_model_config_auto_complete_helpers_check_what_they_add():
    config = pb_utils.ModelConfig(json.dumps({"name": "m", "max_batch_size": 8, "input": [
        {"name": "A", "data_type": "TYPE_FP32", "dims": [4]}]}))
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [4]})  # the same: fine
    with pytest.raises(ValueError, match="expects"):
        config.add_input({"name": "A", "data_type": "TYPE_INT32", "dims": [4]})
    with pytest.raises(ValueError, match="missing 'dims'"):
        config.add_output({"name": "B", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="max_batch_size"):
        config.set_max_batch_size(4)
    config.add_output({"name": "B", "data_type": "TYPE_FP32", "dims": [4]})
    config.set_dynamic_batching()
    assert config.as_dict()["output"] == [{"name": "B", "data_type": "TYPE_FP32", "dims": [4]}]
    assert "dynamic_batching" in config.as_dict()


def test_tensor_and_error_types_behave_as_triton_documents():
    t = pb_utils.Tensor("x", np.array(["a", "b"]))
    assert t.as_numpy().dtype == np.object_ and t.as_numpy().tolist() == [b"a", b"b"]
    assert t.triton_dtype() == 13 and t.name() == "x" and t.shape() == [2]
    assert pb_utils.triton_to_numpy_type(11) is np.float32
    assert pb_utils.numpy_to_triton_type(np.int32) == 8
    error = pb_utils.TritonError("bad", pb_utils.TritonError.INVALID_ARG)
    response = pb_utils.InferenceResponse(error=error)
    assert response.has_error() and response.error().message() == "bad" and response.error().code() == 3
    encoded = pb_utils.serialize_byte_tensor(np.array([b"ab", b"c"], dtype=np.object_))
    assert pb_utils.deserialize_bytes_tensor(encoded.tobytes()).tolist() == [b"ab", b"c"]
    with pytest.raises(pb_utils.TritonModelException, match="BLS"):
        pb_utils.InferenceRequest(model_name="m", inputs=[], requested_output_names=[]).exec()


@pytest.mark.anyio
async def test_execution_env_path_and_decoupled_onnx_models_are_refused_at_load(tmp_path):
    _model(tmp_path, "packed", ADD_SUB, _config(
        "packed", 'parameters: { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }'))
    (tmp_path / "streams" / "1").mkdir(parents=True)
    simple_onnx(tmp_path / "streams" / "1" / "model.onnx")
    (tmp_path / "streams" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx" max_batch_size: 8 model_transaction_policy { decoupled: true }')
    async with triton_dataplane(tmp_path) as dataplane:
        assert dataplane.status("packed").state == "UNAVAILABLE"
        assert "EXECUTION_ENV_PATH" in dataplane.status("packed").reason
        assert dataplane.status("streams").state == "UNAVAILABLE"
        assert "supported only by the python backend" in dataplane.status("streams").reason


@pytest.mark.anyio
async def test_uploads_with_code_are_refused_without_allow_model_code(tmp_path):
    (tmp_path / "empty").mkdir()
    config = mc.ModelConfig(name="up", backend="python")
    files = {"file:1/model.py": ADD_SUB.encode()}
    async with triton_dataplane(tmp_path / "empty", control_mode="explicit") as dataplane:
        with pytest.raises(ServerError, match="--allow-model-code") as raised:
            await dataplane.load("up", config, files)
        assert "model.py" in raised.value.message
        # an ONNX model's upload with a stray .so is code too
        with pytest.raises(ServerError, match="--allow-model-code"):
            await dataplane.load("up", mc.ModelConfig(name="up", platform="onnxruntime_onnx"),
                                 {"file:1/model.onnx": b"x", "file:1/libcustom.so": b"\x7fELF"})
        assert dataplane.status("up").state == "UNAVAILABLE"
    # with --allow-model-code the same upload loads and serves
    from google.protobuf import text_format

    uploaded = text_format.Parse(_config("up"), mc.ModelConfig())
    async with triton_dataplane(tmp_path / "empty", control_mode="explicit", allow_custom_code=True) as dataplane:
        await dataplane.load("up", uploaded, files)
        response = await dataplane.infer(dataplane.model("up"), InferRequest({
            "A": np.ones(4, np.float32), "B": np.ones(4, np.float32)}))
        np.testing.assert_array_equal(response.outputs["SUM"], np.full(4, 2, np.float32))


# -- stub processes -------------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_failing_model_fails_only_its_request_and_the_others_keep_serving(tmp_path):
    _model(tmp_path, "good", ADD_SUB, _config("good"))
    for name, body in FAILING.items():
        # hangs: the request's timeout (the queue policy's) is its deadline
        extra = "dynamic_batching { default_queue_policy { default_timeout_microseconds: 2000000 } }" if name == "hangs" else ""
        _model(tmp_path, name, FAILING_MODEL.format(body=body), _config(name, extra))
    async with triton_dataplane(tmp_path) as dataplane:
        assert [dataplane.status(n).state for n in ("good", *FAILING)] == ["READY"] * 4
        transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:

            async def good_answers() -> None:
                r = await client.post("/v2/models/good/infer", json=_body([1, 2, 3, 4], [10, 20, 30, 40]))
                assert r.status_code == 200, r.text
                outputs = {o["name"]: o for o in r.json()["outputs"]}
                assert outputs["SUM"]["data"] == [11, 22, 33, 44] and outputs["SUM"]["datatype"] == "FP32"
                assert outputs["NAME"]["data"] == ["good"]

            await good_answers()
            r = await client.post("/v2/models/raises/infer", json=_body([0] * 4, [0] * 4))
            assert r.status_code == 500
            assert "ValueError: no good input" in r.json()["error"]
            assert "Traceback" not in r.text and str(tmp_path) not in r.text
            # the instance lives on after a raise: the same answer again
            r = await client.post("/v2/models/raises/infer", json=_body([0] * 4, [0] * 4))
            assert r.status_code == 500 and "ValueError: no good input" in r.json()["error"]
            await good_answers()

            r = await client.post("/v2/models/exits/infer", json=_body([0] * 4, [0] * 4))
            assert r.status_code == 500
            assert "exited with code 1" in r.json()["error"]
            # a failed instance answers with its reason until the model is loaded again
            first = r.json()["error"]
            r = await client.post("/v2/models/exits/infer", json=_body([0] * 4, [0] * 4))
            assert r.status_code == 500 and r.json()["error"] == first and "until the model is loaded again" in first
            await good_answers()
            # the next load starts a new process: the request reaches model.py again (and it exits again)
            await dataplane.manager.load("exits")
            r = await client.post("/v2/models/exits/infer", json=_body([0] * 4, [0] * 4))
            assert r.status_code == 500 and "exited with code 1" in r.json()["error"] and r.json()["error"] != first

            r = await client.post("/v2/models/hangs/infer", json=_body([0] * 4, [0] * 4))
            assert r.status_code == 500
            assert "did not finish within the request's timeout" in r.json()["error"]
            await good_answers()
            assert (await client.get("/v2/health/live")).status_code == 200
        assert dataplane.model("good").stats.success.count == 4
        assert dataplane.model("raises").stats.fail.count == 2


BLS = '''
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            inputs = [pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", np.ones_like(x))]
            sync = pb_utils.InferenceRequest(model_name="simple", requested_output_names=["OUTPUT0"], inputs=inputs).exec()
            both = await asyncio.gather(
                pb_utils.InferenceRequest(model_name="simple", requested_output_names=["OUTPUT1"], inputs=inputs).async_exec(),
                pb_utils.InferenceRequest(model_name="missing", requested_output_names=[], inputs=inputs).async_exec(),
            )
            if sync.has_error() or both[0].has_error() or not both[1].has_error():
                raise pb_utils.TritonModelException("unexpected BLS result")
            responses.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(sync, "OUTPUT0"),
                pb_utils.get_output_tensor_by_name(both[0], "OUTPUT1"),
                pb_utils.Tensor("ERROR", np.array([both[1].error().message().encode()], dtype=np.object_)),
            ]))
        return responses
'''


@pytest.mark.anyio
async def test_bls_calls_other_models_through_the_core_sync_and_async(tmp_path):
    (tmp_path / "simple" / "1").mkdir(parents=True)
    simple_onnx(tmp_path / "simple" / "1" / "model.onnx")
    (tmp_path / "simple" / "config.pbtxt").write_text(textwrap.dedent('''
        name: "simple"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }]
        output [{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }]
        instance_group [{ kind: KIND_CPU count: 1 }]
    '''))
    (tmp_path / "bls" / "1").mkdir(parents=True)
    (tmp_path / "bls" / "1" / "model.py").write_text(BLS)
    (tmp_path / "bls" / "config.pbtxt").write_text(textwrap.dedent('''
        name: "bls"
        backend: "python"
        max_batch_size: 8
        input [{ name: "X" data_type: TYPE_INT32 dims: [ 16 ] }]
        output [{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }]
        output [{ name: "ERROR" data_type: TYPE_STRING dims: [ 1 ] }]
        instance_group [{ kind: KIND_CPU count: 1 }]
    '''))
    async with triton_dataplane(tmp_path) as dataplane:
        assert dataplane.status("bls").state == "READY", dataplane.status("bls").reason
        x = np.arange(32, dtype=np.int32).reshape(2, 16)
        response = await dataplane.infer(dataplane.model("bls"), InferRequest({"X": x}))
        np.testing.assert_array_equal(response.outputs["OUTPUT0"], x + 1)
        np.testing.assert_array_equal(response.outputs["OUTPUT1"], x - 1)
        assert b"Model 'missing' is not ready" in response.outputs["ERROR"][0]
        # the calls went through simple's own scheduler: its statistics count them
        assert dataplane.model("simple").stats.success.count == 2


COUNTDOWN = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils

GATE = threading.Event()

class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            sender = request.get_response_sender()
            if n == 100:  # answers once a later request (101) opened the gate: after this execute returned
                def later(sender=sender):
                    GATE.wait()
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("I", np.array([100], np.int32))]),
                                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                threading.Thread(target=later).start()
                continue
            if n == 101:
                GATE.set()
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            if n < 0:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("N must not be negative")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue

            def count(sender=sender, n=n):  # responses from another thread, after execute returned
                for i in range(n):
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("I", np.array([i], np.int32))]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

            threading.Thread(target=count).start()
        return None
'''


@pytest.mark.anyio
async def test_a_decoupled_model_streams_many_responses_over_grpc_and_http_refuses_it(tmp_path):
    import tritonclient.grpc.aio as aioclient

    from tests.conftest import free_port
    from triserve.options import ServerOptions
    from triserve.protocols.kserve import grpc as v2grpc

    (tmp_path / "countdown" / "1").mkdir(parents=True)
    (tmp_path / "countdown" / "1" / "model.py").write_text(COUNTDOWN)
    (tmp_path / "countdown" / "config.pbtxt").write_text(textwrap.dedent('''
        name: "countdown"
        backend: "python"
        model_transaction_policy { decoupled: true }
        input [{ name: "N" data_type: TYPE_INT32 dims: [ 1 ] }]
        output [{ name: "I" data_type: TYPE_INT32 dims: [ 1 ] }]
        instance_group [{ kind: KIND_CPU count: 1 }]
    '''))
    async with triton_dataplane(tmp_path) as dataplane:
        transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post("/v2/models/countdown/infer", json={"inputs": [
                {"name": "N", "shape": [1], "datatype": "INT32", "data": [2]}]})
            assert r.status_code == 501 and "decoupled transaction policy" in r.json()["error"]
        port = free_port()
        frontend = v2grpc.frontend(dataplane, ServerOptions(), port)
        await frontend.start()
        try:
            async with aioclient.InferenceServerClient(f"127.0.0.1:{port}") as client:

                async def requests():
                    for rid, n in (("wait", 100), ("a", 3), ("neg", -1), ("zero", 0), ("b", 2), ("open", 101)):
                        tensor = aioclient.InferInput("N", [1], "INT32")
                        tensor.set_data_from_numpy(np.array([n], np.int32))
                        yield {"model_name": "countdown", "inputs": [tensor], "request_id": rid}

                answers: dict[str, list[int]] = {}
                errors = []
                async for result, error in client.stream_infer(requests()):
                    if error is not None:
                        errors.append(str(error))
                        continue
                    rid = result.get_response().id
                    answers.setdefault(rid, []).append(int(result.as_numpy("I")[0]))
                    if sum(map(len, answers.values())) == 6 and errors:
                        break
        finally:
            await frontend.stop()
        # none for "zero"; in order per request; "wait" answered after "open" ran on the one instance
        assert answers == {"wait": [100], "a": [0, 1, 2], "b": [0, 1]}
        assert len(errors) == 1 and "N must not be negative" in errors[0]


AUTO_COMPLETE = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [4]})
        config.add_output({"name": "TWICE", "data_type": "TYPE_FP32", "dims": [4]})
        config.set_max_batch_size(4)
        config.set_dynamic_batching()
        return config

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "TWICE", pb_utils.get_input_tensor_by_name(r, "A").as_numpy() * 2)]) for r in requests]
'''


@pytest.mark.anyio
async def test_auto_complete_config_runs_also_for_a_config_that_names_its_tensors(tmp_path):
    _model(tmp_path, "auto", AUTO_COMPLETE, textwrap.dedent('''
        backend: "python"
        input [{ name: "A" data_type: TYPE_FP32 dims: [ 4 ] }]
        instance_group [{ kind: KIND_CPU count: 1 }]
    '''))
    async with triton_dataplane(tmp_path) as dataplane:
        model = dataplane.model("auto")
        assert model.max_batch_size == 4 and [o.name for o in model.config.output] == ["TWICE"]
        assert model.config.WhichOneof("scheduling_choice") == "dynamic_batching"
        response = await dataplane.infer(model, InferRequest({"A": np.ones((3, 4), np.float32)}))
        np.testing.assert_array_equal(response.outputs["TWICE"], np.full((3, 4), 2, np.float32))
