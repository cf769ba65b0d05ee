"""backends/openvino.py: Triton's `backend: "openvino"`, served in-process, answers equal to onnxruntime's."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnxruntime as ort
import openvino as ov  # the `openvino` extra; scripts/setup installs it with `all`
import pytest
from onnx import TensorProto, helper

from tests.inprocess import _save, doubler_onnx, simple_onnx, triton_dataplane
from triserve.core import warmup
from triserve.protocols.kserve.rest import V2HTTP


SIMPLE_CONFIG = """
name: "simple"
backend: "openvino"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
"""


def dense_onnx(path, seed: int = 0) -> None:
    """y = relu(x @ W + b), FP32 [-1, 8] -> [-1, 4]: real arithmetic to compare across runtimes."""
    rng = np.random.default_rng(seed)
    w = helper.make_tensor("W", TensorProto.FLOAT, [8, 4], rng.standard_normal((8, 4)).astype(np.float32).ravel())
    b = helper.make_tensor("B", TensorProto.FLOAT, [4], rng.standard_normal(4).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[w, b],
    )
    _save(graph, path)


def to_ir(onnx_file, xml_file) -> None:
    ov.save_model(ov.convert_model(str(onnx_file)), str(xml_file), compress_to_fp16=False)


async def _infer(dataplane, model: str, inputs: list[dict]) -> httpx.Response:
    transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})


async def _get(dataplane, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


@pytest.mark.anyio
async def test_simple_from_model_onnx_adds_and_subtracts(tmp_path):
    simple_onnx(tmp_path / "simple" / "1" / "model.onnx")  # no IR: OpenVINO reads the ONNX file
    (tmp_path / "simple" / "config.pbtxt").write_text(SIMPLE_CONFIG)
    a, b = list(range(16)), [1] * 16
    async with triton_dataplane(tmp_path) as dataplane:
        response = await _infer(dataplane, "simple", [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b}])
        config = (await _get(dataplane, "/v2/models/simple/config")).json()
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["OUTPUT0"]["data"] == [x + 1 for x in a] and outputs["OUTPUT0"]["datatype"] == "INT32"
    assert outputs["OUTPUT1"]["data"] == [x - 1 for x in a]
    assert config["backend"] == "openvino"


@pytest.mark.anyio
async def test_ir_without_config_is_auto_completed_and_answers_as_onnxruntime(tmp_path):
    dense_onnx(tmp_path / "dense.onnx")
    to_ir(tmp_path / "dense.onnx", tmp_path / "repo" / "dense" / "1" / "model.xml")  # model.xml + model.bin
    assert (tmp_path / "repo" / "dense" / "1" / "model.bin").is_file()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(tmp_path / "dense.onnx")).run(["y"], {"x": x})[0]
    async with triton_dataplane(tmp_path / "repo") as dataplane:
        config = (await _get(dataplane, "/v2/models/dense/config")).json()
        response = await _infer(dataplane, "dense", [
            {"name": "x", "datatype": "FP32", "shape": [3, 8], "data": x.ravel().tolist()}])
    assert config["backend"] == "openvino" and config["max_batch_size"] == 4
    assert config["input"][0]["name"] == "x" and config["input"][0]["dims"] == [8]
    assert config["output"][0]["dims"] == [4] and "dynamic_batching" in config
    # The calibration saw the model (its shapes are fixed): its choice is in the config.
    report = json.loads(config["parameters"][warmup.PARAMETER]["string_value"])
    assert report["source"] == "measured" and 1 <= report["cap"] <= 4
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["shape"] == [3, 4]
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(3, 4), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.anyio
async def test_served_openvino_equals_served_onnxruntime(tmp_path):
    for name, backend in (("by_ov", "openvino"), ("by_ort", "onnxruntime")):
        dense_onnx(tmp_path / name / "1" / "model.onnx")
        (tmp_path / name / "config.pbtxt").write_text(f'backend: "{backend}"\nmax_batch_size: 4\n')
    x = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
    inputs = [{"name": "x", "datatype": "FP32", "shape": [2, 8], "data": x.ravel().tolist()}]
    async with triton_dataplane(tmp_path) as dataplane:
        by_ov = (await _infer(dataplane, "by_ov", inputs)).json()["outputs"][0]
        by_ort = (await _infer(dataplane, "by_ort", inputs)).json()["outputs"][0]
    assert by_ov["shape"] == by_ort["shape"] == [2, 4]
    np.testing.assert_allclose(by_ov["data"], by_ort["data"], rtol=1e-5, atol=1e-6)


@pytest.mark.anyio
@pytest.mark.parametrize("config, reason", [
    ('backend: "openvino"\nmax_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 7 ] } ]\n'
     'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n', "do not match the model's"),
    ('backend: "openvino"\nmax_batch_size: 4\ninput [ { name: "x" data_type: TYPE_INT32 dims: [ 3 ] } ]\n'
     'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n', "has datatype TYPE_FP32 in the model"),
    ('backend: "openvino"\nmax_batch_size: 4\ninput [ { name: "nope" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
     'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n', "is not in the model"),
    ('backend: "openvino"\nmax_batch_size: 4\nparameters { key: "RESHAPE_IO_LAYERS" value { string_value: "yes" } }\n',
     "'RESHAPE_IO_LAYERS' is not supported"),
    ('backend: "openvino"\nmax_batch_size: 4\nparameters { key: "PERFORMANCE_HINT" value { string_value: "FAST" } }\n',
     "must be one of LATENCY, THROUGHPUT"),
    ('backend: "openvino"\nmax_batch_size: 4\nparameters { key: "ENABLE_CPU_PINNING" value { string_value: "maybe" } }\n',
     "'ENABLE_CPU_PINNING' must be YES or NO"),
])
async def test_a_config_that_does_not_fit_fails_to_load_with_the_reason(tmp_path, config, reason):
    doubler_onnx(tmp_path / "doubler" / "1" / "model.onnx")
    (tmp_path / "doubler" / "config.pbtxt").write_text(config)
    async with triton_dataplane(tmp_path) as dataplane:
        status = dataplane.status("doubler")
    assert status.state == "UNAVAILABLE" and not status.ready_versions
    assert reason in status.reason, status.reason
    assert str(tmp_path) not in status.reason  # no server paths in the reason


@pytest.mark.anyio
async def test_a_missing_model_file_names_what_the_backend_reads(tmp_path):
    (tmp_path / "empty" / "1").mkdir(parents=True)
    (tmp_path / "empty" / "config.pbtxt").write_text('backend: "openvino"\n')
    async with triton_dataplane(tmp_path) as dataplane:
        status = dataplane.status("empty")
    assert "model.xml" in status.reason and "model.onnx" in status.reason
    assert str(tmp_path) not in status.reason


def test_the_thread_parameters_reach_openvino(tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    from triserve.backends import InstanceSettings
    from triserve.backends import openvino as backend

    doubler_onnx(tmp_path / "model.onnx")
    config = mc.ModelConfig(name="doubler", max_batch_size=4)
    backend.autocomplete(config, tmp_path / "model.xml")
    default = backend.load(config, tmp_path / "model.xml", InstanceSettings(threads=2))
    assert int(default.compiled.model.get_property("INFERENCE_NUM_THREADS")) == 2
    assert int(default.compiled.model.get_property("NUM_STREAMS")) == 1
    assert default.compiled.model.get_property("ENABLE_CPU_PINNING") is False  # instances must not share a core
    config.parameters["INFERENCE_NUM_THREADS"].string_value = "1"
    config.parameters["PERFORMANCE_HINT"].string_value = "latency"
    config.parameters["ENABLE_CPU_PINNING"].string_value = "yes"
    instance = backend.load(config, tmp_path / "model.xml", InstanceSettings(threads=2))
    assert int(instance.compiled.model.get_property("INFERENCE_NUM_THREADS")) == 1
    assert str(instance.compiled.model.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    assert instance.compiled.model.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32  # not the CPU's bf16
    assert instance.compiled.model.get_property("ENABLE_CPU_PINNING") is True
    result = instance.run({"x": np.array([[1, 2, 3]], np.float32)}, ["y"])
    assert result["y"].tolist() == [[2, 4, 6]]
    instance.close()
    default.close()


def test_an_execution_alone_runs_on_the_wide_model_shared_by_the_version(tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    from triserve.backends import EXECUTION, InstanceSettings
    from triserve.backends import openvino as backend

    doubler_onnx(tmp_path / "model.onnx")
    config = mc.ModelConfig(name="doubler", max_batch_size=4)
    backend.autocomplete(config, tmp_path / "model.xml")
    shared: dict = {}
    first, second = (backend.load(config, tmp_path / "model.xml", InstanceSettings(threads=1, wide_threads=2, shared=shared))
                     for _ in range(2))
    assert first.compiled is not second.compiled
    assert first.wide is second.wide is not None
    assert int(first.compiled.model.get_property("INFERENCE_NUM_THREADS")) == 1
    assert int(first.wide.model.get_property("INFERENCE_NUM_THREADS")) == 2
    used = []
    for compiled in (first.compiled, first.wide):  # which one ran, seen through a spy
        real = compiled.run
        compiled.run = lambda inputs, outputs, real=real, compiled=compiled: used.append(compiled) or real(inputs, outputs)
    x = np.array([[1, 2, 3]], np.float32)
    narrow = first.run({"x": x}, ["y"])
    EXECUTION.alone = True
    try:
        wide = first.run({"x": x}, ["y"])
    finally:
        EXECUTION.alone = False
    assert used == [first.compiled, first.wide]
    assert narrow["y"].tolist() == wide["y"].tolist() == [[2, 4, 6]]
    config.parameters["INFERENCE_NUM_THREADS"].string_value = "1"  # the config chose: no wide model
    assert backend.load(config, tmp_path / "model.xml", InstanceSettings(threads=1, wide_threads=2)).wide is None


def test_the_calibration_cache_key_covers_the_ir_weights(tmp_path):
    from triserve.backends import openvino as backend

    dense_onnx(tmp_path / "dense.onnx")
    to_ir(tmp_path / "dense.onnx", tmp_path / "1" / "model.xml")
    files = backend.model_files(tmp_path / "1" / "model.xml")
    assert [f.name for f in files] == ["model.xml", "model.bin"]
    onnx_only = tmp_path / "2"
    dense_onnx(onnx_only / "model.onnx")
    assert [f.name for f in backend.model_files(onnx_only / "model.xml")] == ["model.onnx"]
