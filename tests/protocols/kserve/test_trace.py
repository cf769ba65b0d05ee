"""Triton's trace extension: the settings (global and per model, Triton's fallback and clearing
rules and words) over HTTP and gRPC, and the trace JSON file a traced request writes (its
timestamps and, at the TENSORS level, Triton's tensor activity records)."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import AsyncIterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port
from triserve.core.dataplane import DataPlane
from triserve.errors import Code, ServerError
from triserve.options import KServeOptions, ServerOptions
from triserve.protocols.kserve import grpc as v2grpc
from triserve.protocols.kserve import trace
from triserve.protocols.kserve.rest import V2HTTP
from triserve.core.trace import Trace
from triserve.protocols.kserve.trace import TraceValues, Tracer
from triserve.protocols.transport import offload

A = np.arange(16, dtype=np.int32).reshape(1, 16)
HTTP_ORDER = [
    "HTTP_RECV_START", "HTTP_RECV_END", "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START", "COMPUTE_END", "INFER_RESPONSE_COMPLETE", "REQUEST_END", "HTTP_SEND_START", "HTTP_SEND_END",
]


def on(tmp_path: Path, **changes) -> TraceValues:
    return TraceValues(**{"level": ("TIMESTAMPS",), "rate": 1, "file": str(tmp_path / "trace.json"), **changes})


def read_traces(path: Path) -> dict[int, dict]:
    """The trace file as {id: {"model": head object, "timestamps": [names in file order], "ns": [...]}}."""
    traces: dict[int, dict] = {}
    for item in json.loads(path.read_text()):
        entry = traces.setdefault(item["id"], {"model": None, "timestamps": [], "ns": []})
        if "timestamps" in item:
            ((stamp,),) = [item["timestamps"]]
            entry["timestamps"].append(stamp["name"])
            entry["ns"].append(stamp["ns"])
        else:
            entry["model"] = item
    return traces


def error_of(call, *args) -> ServerError:
    with pytest.raises(ServerError) as e:
        call(*args)
    return e.value


# -- settings -----------------------------------------------------------------------------------------
def test_startup_settings_read_tritons_trace_config_syntax():
    values = trace.parse_config(["triton,file=/tmp/t.json", "triton,log-frequency=50", "rate=100", "level=TIMESTAMPS",
                                 "count=100"])
    assert values == TraceValues(level=("TIMESTAMPS",), rate=100, count=100, log_frequency=50, file="/tmp/t.json")
    assert Tracer(values).settings() == {
        "trace_level": ["TIMESTAMPS"], "trace_rate": "100", "trace_count": "100", "log_frequency": "50",
        "trace_file": "/tmp/t.json", "trace_mode": "triton",
    }
    with pytest.raises(ValueError, match="trace file name is not given"):
        trace.parse_config(["level=TIMESTAMPS"])
    otel = trace.parse_config(["mode=opentelemetry", "opentelemetry,url=http://collector:4318/v1/traces",
                               "level=TIMESTAMPS", "rate=1"])
    assert (otel.mode, otel.otel, otel.invalid_reason()) == (
        "opentelemetry", (("url", "http://collector:4318/v1/traces"),), None)  # no file needed
    with pytest.raises(ValueError, match="need --trace-config mode=opentelemetry"):
        trace.parse_config(["opentelemetry,url=http://collector:4318"])
    with pytest.raises(ValueError, match="unknown opentelemetry trace setting"):
        trace.parse_config(["mode=opentelemetry", "opentelemetry,colour=blue"])
    # the levels add up, in Triton's order; OFF anywhere disables; Triton's words for the level
    both = trace.parse_config(["triton,file=/tmp/t.json", "level=TENSORS", "level=timestamps"])
    assert both.level == ("TIMESTAMPS", "TENSORS") and both.as_settings()["trace_level"] == ["TIMESTAMPS", "TENSORS"]
    assert trace.parse_config(["triton,file=/tmp/t.json", "level=TENSORS"]).level == ("TENSORS",)
    assert trace.parse_config(["triton,file=/tmp/t.json", "level=max"]).level == ("TIMESTAMPS",)
    assert trace.parse_config(["triton,file=/tmp/t.json", "level=TENSORS", "level=OFF"]).level == ("OFF",)
    with pytest.raises(ValueError, match="invalid value for trace level option: loud"):
        trace.parse_config(["level=loud"])
    with pytest.raises(ValueError, match="unknown trace setting"):
        trace.parse_config(["colour=blue"])


def test_a_model_overrides_what_it_names_and_follows_the_global_setting_for_the_rest(tmp_path):
    tracer = Tracer(TraceValues(file=str(tmp_path / "t.json")))
    assert tracer.settings("simple")["trace_level"] == ["OFF"]
    tracer.update("simple", {"trace_rate": "5"})
    tracer.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": "7", "log_frequency": "3"})
    assert (tracer.settings("simple")["trace_rate"], tracer.settings("simple")["trace_level"]) == ("5", ["TIMESTAMPS"])
    assert tracer.settings("simple")["log_frequency"] == "3"
    assert tracer.settings("other")["trace_rate"] == "7"  # a model without its own setting: the global one
    tracer.update("simple", {"trace_rate": None})  # null clears the override: the global value again
    assert tracer.settings("simple")["trace_rate"] == "7"
    tracer.update("", {"trace_rate": None, "log_frequency": None})  # back to the startup values
    assert (tracer.settings()["trace_rate"], tracer.settings()["log_frequency"]) == ("1000", "0")


def test_setting_updates_have_tritons_checks_and_words(tmp_path):
    tracer = Tracer()
    e = error_of(tracer.update, "", {"trace_level": ["TIMESTAMPS"]})
    assert e.message == "Attempting to set invalid trace setting :trace file name is not given"
    e = error_of(tracer.update, "", {"trace_file": "/tmp/elsewhere.json"})
    assert (e.code, e.message) == (Code.UNSUPPORTED, "trace file location can not be updated through network protocol")
    assert error_of(tracer.update, "", {"trace_level": ["OFF", "TIMESTAMPS"]}).message == (
        "Expect only one trace level 'OFF' is specified")
    assert error_of(tracer.update, "", {"trace_rate": "often"}).message == "Unable to parse 'trace_rate', got: often"
    assert error_of(tracer.update, "", {"trace_count": "-2"}).message == (
        "Unable to parse 'trace_count'. Expecting value >= -1, got: -2")
    assert error_of(tracer.update, "", {"log_frequency": "99999999999"}).message.startswith(
        "Unable to parse 'log_frequency', value is out of range [ 0, 4294967295 ]")
    assert error_of(tracer.update, "", {"trace_rate": ["1", "2"]}).message == "expect only 1 value for 'trace_rate'"
    assert error_of(tracer.update, "", {"trace_level": ["TENSORS"]}).message == (
        "Attempting to set invalid trace setting :trace file name is not given")
    assert error_of(tracer.update, "", {"trace_level": ["LOUD"]}).message.startswith("Unable to parse 'trace_level'")
    assert tracer.settings()["trace_level"] == ["OFF"]  # nothing changed


def test_every_rate_th_request_is_traced_until_count_traces_were_taken(tmp_path):
    tracer = Tracer(on(tmp_path, rate=3, count=2))
    sampled = [tracer.sample("simple") is not None for _ in range(12)]
    assert sampled == [False, False, True, False, False, True] + [False] * 6
    assert tracer.settings()["trace_count"] == "0"  # as Triton: what is left to collect
    assert Tracer(TraceValues()).sample("simple") is None  # tracing is off by default


def test_log_frequency_writes_every_n_traces_to_an_indexed_file(tmp_path):
    tracer = Tracer(on(tmp_path, log_frequency=2))
    for _ in range(5):
        sampled = tracer.sample("simple")
        sampled.model_version = "1"
        sampled.stamp("REQUEST_START")
        tracer.finish(sampled, "REQUEST_END")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.json.0", "trace.json.1"]
    assert sorted(read_traces(tmp_path / "trace.json.1")) == [3, 4]
    tracer.close()  # the fifth, still held, goes to the next indexed file
    assert sorted(read_traces(tmp_path / "trace.json.2")) == [5]
    assert read_traces(tmp_path / "trace.json.2")[5]["model"] == {"id": 5, "model_name": "simple", "model_version": 1}


# -- traced requests ----------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def http_client(dataplane: DataPlane, tracer: Tracer) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=V2HTTP(dataplane, tracer=tracer).app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def simple_request(request_id: str = "") -> dict:
    body = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": A.ravel().tolist()}
                       for n in ("INPUT0", "INPUT1")]}
    if request_id:
        body["id"] = request_id
    return body


@pytest.mark.anyio
async def test_a_traced_http_request_writes_tritons_trace_json_in_the_order_it_happened(dataplane, tmp_path):
    tracer = Tracer(on(tmp_path))
    async with http_client(dataplane, tracer) as client:
        for request_id in ("first", ""):
            response = await client.post("/v2/models/simple/infer", json=simple_request(request_id))
            assert response.status_code == 200, response.text
    traces = read_traces(tmp_path / "trace.json")
    assert sorted(traces) == [1, 2]
    assert traces[1]["model"] == {"id": 1, "model_name": "simple", "model_version": 1, "request_id": "first"}
    assert traces[2]["model"] == {"id": 2, "model_name": "simple", "model_version": 1}
    for entry in traces.values():
        assert entry["timestamps"] == HTTP_ORDER
        assert entry["ns"] == sorted(entry["ns"]) and entry["ns"][0] > 0


@pytest.mark.anyio
async def test_trace_settings_over_http_are_global_and_per_model(dataplane, tmp_path):
    tracer = Tracer(TraceValues(file=str(tmp_path / "trace.json")))
    async with http_client(dataplane, tracer) as client:
        got = (await client.get("/v2/trace/setting")).json()
        assert got == {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
                       "trace_file": str(tmp_path / "trace.json"), "trace_mode": "triton"}
        response = await client.post("/v2/models/simple/trace/setting", json={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
        assert response.status_code == 200, response.text
        assert (response.json()["trace_level"], response.json()["trace_rate"]) == (["TIMESTAMPS"], "1")
        assert (await client.get("/v2/trace/setting")).json()["trace_level"] == ["OFF"]
        await client.post("/v2/models/simple/infer", json=simple_request())
        assert len(read_traces(tmp_path / "trace.json")) == 1  # only the model asked for it
        response = await client.post("/v2/trace/setting", json={"trace_file": "/tmp/x.json"})
        assert (response.status_code, response.json()["error"]) == (
            501, "trace file location can not be updated through network protocol")
        response = await client.get("/v2/models/nope/trace/setting")
        assert (response.status_code, response.json()["error"]) == (400, "Request for unknown model : nope")
        response = await client.post("/v2/trace/setting", json={"trace_rate": 5})
        assert response.status_code == 400


@contextlib.asynccontextmanager
async def grpc_client(dataplane: DataPlane, tmp_path: Path) -> AsyncIterator[aioclient.InferenceServerClient]:
    port = free_port()
    config = (f"triton,file={tmp_path / 'grpc.json'}",)
    frontend = v2grpc.frontend(dataplane, ServerOptions(kserve=KServeOptions(trace_config=config)), port)
    await frontend.start()
    try:
        async with aioclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            yield client
    finally:
        await frontend.stop()


@pytest.mark.anyio
async def test_trace_settings_and_a_traced_request_over_grpc(dataplane, tmp_path):
    async with grpc_client(dataplane, tmp_path) as client:
        settings = await client.get_trace_settings(as_json=True)
        assert settings["settings"]["trace_level"] == {"value": ["OFF"]}
        updated = await client.update_trace_settings(
            model_name="simple", settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}, as_json=True
        )
        assert updated["settings"]["trace_rate"] == {"value": ["1"]}
        inputs = [aioclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(A)
        await client.infer("simple", inputs, request_id="g1")
        with pytest.raises(InferenceServerException) as e:
            await client.update_trace_settings(model_name="nope", settings={"trace_rate": "1"})
        assert (e.value.status(), e.value.message()) == ("StatusCode.INVALID_ARGUMENT", "Request for unknown model : nope")
        # an empty value list clears the model's override
        cleared = await client.update_trace_settings(model_name="simple", settings={"trace_level": [], "trace_rate": []})
        assert list(cleared.settings["trace_level"].value) == ["OFF"]
    trace.WRITER.submit(lambda: None).result()  # the writer has written what came before
    (entry,) = read_traces(tmp_path / "grpc.json").values()
    assert entry["model"]["request_id"] == "g1"
    assert entry["timestamps"][:2] == ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END"]
    assert entry["timestamps"][-2:] == ["GRPC_SEND_START", "GRPC_SEND_END"]
    assert "COMPUTE_START" in entry["timestamps"] and entry["ns"] == sorted(entry["ns"])


# -- the TENSORS level: Triton's tensor activity records ------------------------------------------------
# What Triton's TraceManager::TraceTensorActivity (server src/tracer.cc) streams for these values: its
# `ss << element` loops compiled with g++ (float/double via ostream's default %g, int8/uint8 as chars,
# bool without boolalpha) gave exactly these strings.
RENDERED_AS_TRITON = [
    ("FP32", np.array([0.1, 1.5, -2.0, 1e-7, 1234567.0, 100000.0, 1e6, 3.14159265, np.inf, -np.inf, np.nan, -np.nan,
                       0.0, -0.0, 1e38, 123456.5], np.float32),
     "0.1,1.5,-2,1e-07,1.23457e+06,100000,1e+06,3.14159,inf,-inf,nan,-nan,0,-0,1e+38,123456"),
    ("FP64", np.array([0.1, 2 / 3, 1e-300, 5e-324, 12345678901.0]), "0.1,0.666667,1e-300,4.94066e-324,1.23457e+10"),
    ("INT64", np.array([-(2**63), 0, 42], np.int64), "-9223372036854775808,0,42"),
    ("UINT64", np.array([2**64 - 1, 1], np.uint64), "18446744073709551615,1"),
    ("INT16", np.array([-32768, 7], np.int16), "-32768,7"),
    ("UINT8", np.array([65, 66, 48, 122], np.uint8), "A,B,0,z"),
    ("INT8", np.array([65, 97, 33], np.int8), "A,a,!"),
    ("BOOL", np.array([False, True, True, False]), "0,1,1,0"),
    ("BYTES", np.array([b"hello", b"", "w\u00f6rld".encode()], dtype=object), '"hello","","w\u00f6rld"'),
    ("FP16", np.array([1.5, 2.0], np.float16), ""),  # tracer.cc writes nothing for FP16 and BF16
]


@pytest.mark.parametrize("datatype, array, expected", RENDERED_AS_TRITON, ids=[c[0] for c in RENDERED_AS_TRITON])
def test_tensor_data_is_rendered_as_tritons_tracer_streams_it(datatype, array, expected):
    assert trace.tensor_data(datatype, array) == expected
    assert trace.tensor_data(datatype, array.reshape(-1, 1)) == expected  # element order, whatever the shape


def test_a_tensor_record_is_tritons_json_object_and_stays_valid_json_where_tritons_would_not():
    traced = Trace(3, tensors=True)
    traced.tensor("TENSOR_QUEUE_INPUT", "INPUT0", "INT32", np.arange(4, dtype=np.int32).reshape(2, 2), 1)
    traced.tensor("TENSOR_BACKEND_OUTPUT", "S", "BYTES", np.array([b"a", b"b"], dtype=object), 2)
    traced.tensor("TENSOR_BACKEND_OUTPUT", "Q", "UINT8", np.array([34, 10, 0xC8], np.uint8), 3)
    traced.tensor("TENSOR_BACKEND_OUTPUT", "Z", "FP32", np.float32(2.5), 4)
    trace.render_records(traced.id, traced.tensor_records)
    first, strings, chars, scalar = (r.rendered for r in traced.tensor_records)
    # byte for byte what tracer.cc writes
    assert first == (b'{"id":3,"activity":"TENSOR_QUEUE_INPUT","tensor":{"name":"INPUT0","data":"0,1,2,3",'
                     b'"shape":"2,2","dtype":"INT32"}}')
    assert strings == (b'{"id":3,"activity":"TENSOR_BACKEND_OUTPUT","tensor":{"name":"S","data":"\\"a\\",\\"b\\"",'
                       b'"shape":"2","dtype":"BYTES"}}')
    assert json.loads(scalar)["tensor"] == {"name": "Z", "data": "2.5", "shape": "", "dtype": "FP32"}
    # a quote, a newline and a byte above 127 as characters (tracer.cc's raw bytes would break the JSON)
    assert json.loads(chars)["tensor"]["data"] == '",\n,\u00c8'
    assert all(r.array is None for r in traced.tensor_records)  # the references are dropped once rendered
    odd = Trace(4, tensors=True)  # text orjson cannot write (a lone surrogate) still gives a record
    odd.tensor("TENSOR_BACKEND_OUTPUT", "S", "BYTES", np.array(["x\ud800"], dtype=object), 1)
    trace.render_records(odd.id, odd.tensor_records)
    assert json.loads(odd.tensor_records[0].rendered)["tensor"]["data"] == '"x\\ud800"'


@pytest.mark.anyio
async def test_large_tensors_are_rendered_on_a_worker_thread_and_small_ones_at_once(tmp_path, monkeypatch):
    threads = []
    real = trace.render_records

    def recording(trace_id, records):
        threads.append(threading.get_ident())
        real(trace_id, records)

    monkeypatch.setattr(trace, "render_records", recording)
    tracer = Tracer(on(tmp_path, level=("TENSORS",)))
    small, large = tracer.sample("simple"), tracer.sample("simple")
    small.tensor("TENSOR_QUEUE_INPUT", "x", "INT32", np.zeros(16, np.int32))
    large.tensor("TENSOR_QUEUE_INPUT", "x", "INT32", np.zeros(offload.OFF_LOOP_SIZE // trace.RENDER_COST + 1, np.int32))
    await tracer.render(small)
    await tracer.render(large)
    await tracer.render(large)  # rendered once only
    assert threads[0] == threading.get_ident() and threads[1] != threading.get_ident() and len(threads) == 2
    assert large.tensor_records[0].rendered.endswith(b',0,0","shape":"1025","dtype":"INT32"}}')


def file_items(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def tensors_of(items: list[dict], trace_id: int) -> list[tuple[str, dict]]:
    return [(i["activity"], i["tensor"]) for i in items if i["id"] == trace_id and "activity" in i]


def int32_tensor(name: str, values: np.ndarray) -> dict:
    return {"name": name, "data": ",".join(map(str, values.ravel().tolist())), "shape": "1,16", "dtype": "INT32"}


@pytest.mark.anyio
async def test_a_tensors_traced_http_request_writes_tritons_tensor_records_among_its_timestamps(dataplane, tmp_path):
    tracer = Tracer(TraceValues(file=str(tmp_path / "trace.json")))
    async with http_client(dataplane, tracer) as client:
        response = await client.post("/v2/trace/setting", json={"trace_level": ["TENSORS", "TIMESTAMPS"], "trace_rate": "1"})
        assert response.json()["trace_level"] == ["TIMESTAMPS", "TENSORS"]  # Triton's order
        response = await client.post("/v2/models/simple/infer", json=simple_request("t1"))
        assert response.status_code == 200, response.text
        trace.WRITER.submit(lambda: None).result()
        # the scores model's output as the model made it, though the client asked for classes
        response = await client.post("/v2/models/scores/infer", json={
            "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 5], "data": [0.5, 0.25, 1, 0, 2]}],
            "outputs": [{"name": "OUTPUT", "parameters": {"classification": 2}}]})
        assert response.status_code == 200, response.text
    trace.WRITER.submit(lambda: None).result()
    items = file_items(tmp_path / "trace.json")
    assert items[0] == {"id": 1, "model_name": "simple", "model_version": 1, "request_id": "t1"}
    assert tensors_of(items, 1) == [
        ("TENSOR_QUEUE_INPUT", int32_tensor("INPUT0", A)), ("TENSOR_QUEUE_INPUT", int32_tensor("INPUT1", A)),
        ("TENSOR_BACKEND_OUTPUT", int32_tensor("OUTPUT0", A + A)), ("TENSOR_BACKEND_OUTPUT", int32_tensor("OUTPUT1", A - A)),
    ]
    # in the file, where they happened among the timestamps
    sequence = [i.get("activity") or i["timestamps"][0]["name"] for i in items if i["id"] == 1 and "model_name" not in i]
    assert sequence == HTTP_ORDER[:4] + ["TENSOR_QUEUE_INPUT"] * 2 + HTTP_ORDER[4:8] + ["TENSOR_BACKEND_OUTPUT"] * 2 + HTTP_ORDER[8:]
    assert tensors_of(items, 2) == [
        ("TENSOR_QUEUE_INPUT", {"name": "INPUT", "data": "0.5,0.25,1,0,2", "shape": "1,5", "dtype": "FP32"}),
        ("TENSOR_BACKEND_OUTPUT", {"name": "OUTPUT", "data": "0.5,0.25,1,0,2", "shape": "1,5", "dtype": "FP32"}),
    ]


@pytest.mark.anyio
async def test_the_tensors_level_alone_writes_only_tensor_records_as_triton(dataplane, tmp_path):
    tracer = Tracer(TraceValues(file=str(tmp_path / "trace.json")))
    async with http_client(dataplane, tracer) as client:
        response = await client.post("/v2/models/simple/trace/setting", json={"trace_level": ["TENSORS"], "trace_rate": "1"})
        assert (response.status_code, response.json()["trace_level"]) == (200, ["TENSORS"])
        assert (await client.get("/v2/trace/setting")).json()["trace_level"] == ["OFF"]
        response = await client.post("/v2/models/simple/infer", json=simple_request("alone"))
        assert response.status_code == 200, response.text
    trace.WRITER.submit(lambda: None).result()
    items = file_items(tmp_path / "trace.json")
    # Triton reports the model and the timestamps only at the TIMESTAMPS level
    assert [(i["id"], i["activity"], i["tensor"]["name"]) for i in items] == [
        (1, "TENSOR_QUEUE_INPUT", "INPUT0"), (1, "TENSOR_QUEUE_INPUT", "INPUT1"),
        (1, "TENSOR_BACKEND_OUTPUT", "OUTPUT0"), (1, "TENSOR_BACKEND_OUTPUT", "OUTPUT1"),
    ]


@pytest.mark.anyio
async def test_tensor_trace_settings_and_a_traced_request_over_grpc(dataplane, tmp_path):
    async with grpc_client(dataplane, tmp_path) as client:
        updated = await client.update_trace_settings(
            model_name="simple", settings={"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": "1"}, as_json=True)
        assert updated["settings"]["trace_level"] == {"value": ["TIMESTAMPS", "TENSORS"]}
        read = await client.get_trace_settings(model_name="simple", as_json=True)
        assert read["settings"]["trace_level"] == {"value": ["TIMESTAMPS", "TENSORS"]}
        inputs = [aioclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(A)
        await client.infer("simple", inputs, request_id="g2")
    trace.WRITER.submit(lambda: None).result()
    # the data plane's one tracer (made by the first gRPC front end of this module's data plane)
    items = file_items(Path(trace.tracer(dataplane).defaults.file))
    (trace_id,) = [i["id"] for i in items if i.get("request_id") == "g2"]
    items = [i for i in items if i["id"] == trace_id]
    assert tensors_of(items, trace_id) == [
        ("TENSOR_QUEUE_INPUT", int32_tensor("INPUT0", A)), ("TENSOR_QUEUE_INPUT", int32_tensor("INPUT1", A)),
        ("TENSOR_BACKEND_OUTPUT", int32_tensor("OUTPUT0", A + A)), ("TENSOR_BACKEND_OUTPUT", int32_tensor("OUTPUT1", A - A)),
    ]
    assert [i["timestamps"][0]["name"] for i in items if "timestamps" in i][-2:] == ["GRPC_SEND_START", "GRPC_SEND_END"]
