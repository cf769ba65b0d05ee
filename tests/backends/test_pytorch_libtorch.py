"""TorchScript models served over the v2 protocol, bound the way Triton's pytorch backend binds them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, List, Tuple

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from torch import nn
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, pixels_nchw
from triserve.backends import cpu_count

# Slow tier: server subprocesses over real TorchScript models.
pytestmark = pytest.mark.slow

A = np.array([[1, 2, 3, 4]], dtype=np.float32)
B = np.array([[10, 20, 30, 50]], dtype=np.float32)


class TwoArgs(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a - b, a * b


class DictInput(nn.Module):
    def forward(self, x: Dict[str, torch.Tensor]) -> torch.Tensor:
        return x["scale"] * x["value"]


class Counts(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).sum(dim=1, keepdim=True)  # int64


def _tensor(name: str, dims: str = "[ 4 ]", data_type: str = "TYPE_FP32") -> str:
    return f'{{ name: "{name}" data_type: {data_type} dims: {dims} }}'


def _config(inputs: list[str], outputs: list[str], extra: str = "") -> str:
    return (
        'platform: "pytorch_libtorch"\nmax_batch_size: 4\n'
        f"input [ {', '.join(inputs)} ]\n"
        + (f"output [ {', '.join(outputs)} ]\n" if outputs else "")
        + extra
    )


def _save(module: torch.jit.ScriptModule, repo: Path, name: str, config: str | None) -> None:
    (repo / name / "1").mkdir(parents=True)
    module.save(str(repo / name / "1" / "model.pt"))
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def torch_server(start_server, tmp_path_factory) -> RunningServer:
    repo = tmp_path_factory.mktemp("torch") / "models"
    two = torch.jit.trace(TwoArgs(), (torch.zeros(1, 4), torch.zeros(1, 4)))
    outputs = [_tensor("prod__1"), _tensor("diff__0")]  # listed out of order on purpose
    _save(two, repo, "by_argument_name", _config([_tensor("b"), _tensor("a")], outputs))
    _save(two, repo, "by_index", _config([_tensor("INPUT__1"), _tensor("INPUT__0")], outputs))
    _save(two, repo, "by_config_order", _config([_tensor("first"), _tensor("second")], [_tensor("d"), _tensor("p")]))
    _save(two, repo, "variable_dims", _config([_tensor("a", "[ -1 ]"), _tensor("b", "[ -1 ]")],
                                              [_tensor("diff__0", "[ -1 ]"), _tensor("prod__1", "[ -1 ]")]))
    _save(two, repo, "outputs_autocompleted", _config([_tensor("a"), _tensor("b")], []))
    _save(torch.jit.script(DictInput()), repo, "dict_input",
          _config([_tensor("value"), _tensor("scale", "[ 1 ]")], [_tensor("output__0")]))
    counts = torch.jit.trace(Counts(), torch.zeros(1, 4))
    _save(counts, repo, "counts", _config([_tensor("x")], [_tensor("y__0", "[ 1 ]", "TYPE_INT64")]))
    # Broken ones: each is unavailable with its reason, the others serve.
    _save(two, repo, "no_config", None)
    _save(two, repo, "wrong_input_count", _config([_tensor("a")], [_tensor("diff__0")]))
    _save(counts, repo, "wrong_output_type", _config([_tensor("x")], [_tensor("y__0", "[ 1 ]", "TYPE_INT32")]))
    _save(two, repo, "wrong_output_dims", _config([_tensor("a"), _tensor("b")], [_tensor("diff__0", "[ 5 ]")]))
    _save(two, repo, "gpu", _config([_tensor("a"), _tensor("b")], [_tensor("diff__0")],
                                    "instance_group [ { kind: KIND_GPU } ]"))
    _save(two, repo, "bad_thread_count", _config([_tensor("a"), _tensor("b")], [_tensor("diff__0")],
                                                 'parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "all" } }'))
    (repo / "corrupt" / "1").mkdir(parents=True)
    (repo / "corrupt" / "1" / "model.pt").write_bytes(b"this is not a TorchScript archive")
    (repo / "corrupt" / "config.pbtxt").write_text(_config([_tensor("a")], [_tensor("b")]))
    return start_server("--model-repository", repo)


@pytest.fixture(scope="module")
def client(torch_server):
    with httpclient.InferenceServerClient(torch_server.url) as c:
        yield c


def infer(client, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    wire = []
    for name, array in inputs.items():
        i = httpclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
        i.set_data_from_numpy(array)
        wire.append(i)
    requested = [httpclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    result = client.infer(model, wire, outputs=requested)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def reasons(client) -> dict[str, str]:
    return {row["name"]: row.get("reason", "") for row in client.get_model_repository_index()}


def test_torchmobilenet_answers_what_torch_computes(blog_server, torchmobilenet_module):
    """The blog's torchmobilenet, config as written: the server's answer is torch's own."""
    x = np.stack([pixels_nchw("chelsea"), pixels_nchw("coffee")])
    with torch.inference_mode():
        want = torchmobilenet_module(torch.from_numpy(x)).numpy()
    with httpclient.InferenceServerClient(blog_server.url) as client:
        assert client.is_model_ready("torchmobilenet")
        config = client.get_model_config("torchmobilenet")
        got = infer(client, "torchmobilenet", {"input__0": x})["output__0"]
    assert config["platform"] == "pytorch_libtorch" and config["backend"] == "pytorch"
    assert config["input"][0]["format"] == "FORMAT_NCHW" and config["max_batch_size"] == 8
    assert got.shape == (2, 1000)
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(want[0] - want[1]).max() > 1e-2  # different photos, different answers: the check means something


@pytest.mark.parametrize("model", ["by_argument_name", "by_index", "by_config_order"])
def test_inputs_and_outputs_bind_like_triton(client, model):
    names = {"by_argument_name": ("a", "b"), "by_index": ("INPUT__0", "INPUT__1"), "by_config_order": ("first", "second")}
    a, b = names[model]
    got = infer(client, model, {a: A, b: B})
    diff, prod = ("d", "p") if model == "by_config_order" else ("diff__0", "prod__1")
    np.testing.assert_array_equal(got[diff], A - B)
    np.testing.assert_array_equal(got[prod], A * B)


def test_one_requested_output_and_variable_dims(client):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = infer(client, "variable_dims", {"a": a, "b": a + 1}, outputs=["prod__1"])
    assert list(got) == ["prod__1"]
    np.testing.assert_array_equal(got["prod__1"], a * (a + 1))


def test_dict_input_gets_the_config_names_as_keys(client):
    value = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32)
    scale = np.array([[2], [10]], dtype=np.float32)
    np.testing.assert_array_equal(infer(client, "dict_input", {"value": value, "scale": scale})["output__0"], value * scale)


def test_integer_output(client):
    got = infer(client, "counts", {"x": np.array([[1, -1, 2, 0]], dtype=np.float32)})["y__0"]
    assert got.dtype == np.int64 and got.tolist() == [[2]]


def test_missing_outputs_are_found_by_a_test_run(client):
    config = client.get_model_config("outputs_autocompleted")
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("output__0", "TYPE_FP32", [4]),
        ("output__1", "TYPE_FP32", [4]),
    ]
    got = infer(client, "outputs_autocompleted", {"a": A, "b": B})
    np.testing.assert_array_equal(got["output__1"], A * B)


def test_a_failing_forward_is_a_clear_500(client, torch_server):
    # Both inputs accept any length, but a - b needs equal lengths: the model itself fails.
    body = {
        "inputs": [
            {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
            {"name": "b", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]},
        ]
    }
    r = httpx.post(f"http://{torch_server.url}/v2/models/variable_dims/infer", json=body, timeout=30)
    assert r.status_code == 500
    assert "PyTorch execute failure" in r.json()["error"] and "Traceback" not in r.json()["error"]
    np.testing.assert_array_equal(infer(client, "by_argument_name", {"a": A, "b": B})["diff__0"], A - B)


def test_broken_models_are_unavailable_with_a_reason(client):
    why = reasons(client)
    assert "not supported for the pytorch backend" in why["no_config"]
    assert "forward(Tensor a, Tensor b)" in why["no_config"]
    assert "configuration expects 1 inputs, model provides 2" in why["wrong_input_count"]
    assert "expects datatype TYPE_INT32 for output 'y__0', model provides TYPE_INT64" in why["wrong_output_type"]
    assert "configuration says [5]" in why["wrong_output_dims"]
    assert "torch.jit.load could not load" in why["corrupt"]
    assert "parameter 'INTRA_OP_THREAD_COUNT' of model 'bad_thread_count' must be a positive integer" in why["bad_thread_count"]
    if torch.cuda.is_available():
        assert client.is_model_ready("gpu")
    else:
        assert "KIND_GPU" in why["gpu"] and "no CUDA device" in why["gpu"]
    for name in ("no_config", "wrong_input_count", "wrong_output_type", "wrong_output_dims", "corrupt", "bad_thread_count"):
        assert not client.is_model_ready(name)
    with pytest.raises(InferenceServerException, match="unknown model|no available versions"):
        infer(client, "corrupt", {"a": A})


def test_the_inter_op_pool_is_set_once_for_the_process(torch_server):
    assert "torch: 1 inter-op thread(s) for the whole process" in torch_server.log()


# -- threads: which thread computes, on how many intra-op threads ------------------------------

class Where:
    """Stands in for a loaded module: records the thread each forward() runs on and torch's
    intra-op thread count there, then runs the real module."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module
        self.calls: list[tuple[str, int]] = []

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        self.calls.append((threading.current_thread().name, torch.get_num_threads()))
        return self.module(*args)


def _counts_model(tmp_path: Path, settings, extra: str = ""):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from triserve.backends import pytorch_libtorch as backend

    torch.jit.script(Counts()).save(str(tmp_path / "model.pt"))
    config = text_format.Parse(
        'name: "counts" platform: "pytorch_libtorch" max_batch_size: 4'
        ' input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]'
        f' output [ {{ name: "y" data_type: TYPE_INT64 dims: [ 1 ] }} ] {extra}', mc.ModelConfig())
    model = backend.load(config, tmp_path / "model.pt", settings)
    model.module = Where(model.module)
    return model


def _run_on_a_thread_of_its_own(model, alone: bool = False) -> tuple[str, int]:
    """One execution as the scheduler makes it: on an execution thread, alone or not."""
    from triserve.backends import EXECUTION

    def execute() -> None:
        EXECUTION.alone = alone
        np.testing.assert_array_equal(model.run({"x": A}, ["y"])["y"], [[4]])

    thread = threading.Thread(target=execute, name="execution")
    thread.start()
    thread.join()
    return model.module.calls[-1]


def test_a_single_threaded_instance_computes_on_the_execution_thread(tmp_path):
    from triserve.backends import InstanceSettings

    model = _counts_model(tmp_path, InstanceSettings(threads=1))
    assert _run_on_a_thread_of_its_own(model) == ("execution", 1)


def test_instances_on_several_threads_hand_their_work_to_the_process_threads_kept_for_that_count(tmp_path):
    # libgomp keeps a team of workers for every thread that ever computed on several threads:
    # the execution threads must not become such threads, or the teams outnumber the cores.
    from triserve.backends import InstanceSettings

    first = _counts_model(tmp_path, InstanceSettings(threads=2))
    second = _counts_model(tmp_path, InstanceSettings(threads=2))
    places = {_run_on_a_thread_of_its_own(model) for model in (first, second, first)}
    assert {count for _, count in places} == {2}
    assert all(name.startswith("torch-2-threads") for name, _ in places)
    assert len({name for name, _ in places}) <= max(1, cpu_count() // 2)


def test_an_execution_that_runs_alone_uses_every_core(tmp_path):
    from triserve.backends import InstanceSettings

    model = _counts_model(tmp_path, InstanceSettings(threads=1, wide_threads=4))
    name, count = _run_on_a_thread_of_its_own(model, alone=True)
    assert name.startswith("torch-4-threads") and count == 4
    assert _run_on_a_thread_of_its_own(model, alone=False) == ("execution", 1)


def test_threads_torch_work_reaches_unasked_compute_on_one_thread(tmp_path):
    from triserve.backends import InstanceSettings

    model = _counts_model(tmp_path, InstanceSettings(threads=2))
    _run_on_a_thread_of_its_own(model)
    counts: list[int] = []
    unasked = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    unasked.start()
    unasked.join()
    assert counts == [1]


def test_an_explicit_intra_op_thread_count_holds_when_alone_too(tmp_path):
    from triserve.backends import InstanceSettings

    extra = 'parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "1" } }'
    model = _counts_model(tmp_path, InstanceSettings(threads=2, wide_threads=4), extra)
    assert _run_on_a_thread_of_its_own(model, alone=True) == ("execution", 1)


# -- strings: List[str] in and out, as Triton's pytorch backend binds TYPE_STRING ---------------

class Shout(nn.Module):
    def forward(self, words: List[str], scale: torch.Tensor) -> Tuple[List[str], torch.Tensor]:
        return [w.upper() + "!" for w in words], scale * 2


class Echo(nn.Module):
    def forward(self, words: List[str]) -> List[str]:
        return words


def _string_model(tmp_path: Path, module: nn.Module, config: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from triserve.backends import InstanceSettings
    from triserve.backends import pytorch_libtorch as backend

    torch.jit.script(module).save(str(tmp_path / "model.pt"))
    parsed = text_format.Parse(f'name: "strings" platform: "pytorch_libtorch" {config}', mc.ModelConfig())
    return backend.load(parsed, tmp_path / "model.pt", InstanceSettings())


def _bytes(*items: bytes) -> np.ndarray:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


SHOUT_CONFIG = """max_batch_size: 0
input [ { name: "words" data_type: TYPE_STRING dims: [ -1 ] }, { name: "scale" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT__0" data_type: TYPE_STRING dims: [ -1 ] }, { name: "SCALED__1" data_type: TYPE_FP32 dims: [ 1 ] } ]"""


def test_string_inputs_and_outputs_are_lists_of_str(tmp_path):
    model = _string_model(tmp_path, Shout(), SHOUT_CONFIG)
    out = model.run({"words": _bytes(b"he\x00llo", b"b'1'", b""), "scale": np.ones(1, np.float32)}, ["OUT__0", "SCALED__1"])
    assert out["OUT__0"].dtype == np.object_ and out["OUT__0"].tolist() == [b"HE\x00LLO!", b"B'1'!", b"!"]
    assert out["SCALED__1"].tolist() == [2.0]


def test_a_batching_string_model_gets_one_string_per_batch_row(tmp_path):
    config = """max_batch_size: 4
input [ { name: "words" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]
output [ { name: "echo" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]"""
    model = _string_model(tmp_path, Echo(), config)
    out = model.run({"words": _bytes("é".encode(), b"\x00")}, ["echo"])  # the core applies the reshape first
    assert out["echo"].tolist() == ["é".encode(), b"\x00"]


def test_bytes_that_are_not_utf8_are_refused_for_a_list_of_str(tmp_path):
    from triserve.errors import Code, ServerError

    model = _string_model(tmp_path, Shout(), SHOUT_CONFIG)
    with pytest.raises(ServerError) as e:
        model.run({"words": _bytes(b"ok", b"\xff"), "scale": np.ones(1, np.float32)}, ["OUT__0"])
    assert e.value.code == Code.INVALID_ARG and "input 'words': element 1 is not UTF-8 text" in e.value.message


@pytest.mark.parametrize("config, words", [
    (SHOUT_CONFIG.replace('dims: [ -1 ] }, { name: "scale"', 'dims: [ 2, 2 ] }, { name: "scale"'),
     "Triton only supports 1 dimensional List of String as input for 'words' for model 'strings'"),
    ("max_batch_size: 4\n" + SHOUT_CONFIG.split("\n", 1)[1],  # [-1] after the batch dim: two dims
     "Triton only supports 1 dimensional List of String as input for 'words' for model 'strings'"),
    (SHOUT_CONFIG.replace('"scale" data_type: TYPE_FP32', '"scale" data_type: TYPE_STRING'),
     "input 'scale' is TYPE_STRING in the configuration but forward() argument 'scale' has type Tensor"),
    (SHOUT_CONFIG.replace('"words" data_type: TYPE_STRING', '"words" data_type: TYPE_FP32'),
     "input 'words' is TYPE_FP32 in the configuration but forward() argument 'words' has type List[str]"),
], ids=["two dims", "a batch dim and one more", "string config for a Tensor", "tensor config for a List[str]"])
def test_string_bindings_triton_refuses_fail_to_load(tmp_path, config, words):
    from triserve.errors import ServerError

    with pytest.raises(ServerError) as e:
        _string_model(tmp_path, Shout(), config)
    assert words in e.value.message


def test_a_string_output_the_config_calls_a_tensor_is_a_clear_error(tmp_path):
    from triserve.errors import ServerError

    model = _string_model(tmp_path, Shout(), SHOUT_CONFIG.replace('"OUT__0" data_type: TYPE_STRING', '"OUT__0" data_type: TYPE_INT32'))
    with pytest.raises(ServerError) as e:
        model.run({"words": _bytes(b"a"), "scale": np.ones(1, np.float32)}, ["OUT__0"])
    assert "configuration expects datatype TYPE_INT32 for output 'OUT__0', model provides a List[str] (TYPE_STRING)" in e.value.message
