"""TorchScript models served over the v2 protocol, bound the way Triton's pytorch backend binds them."""

from __future__ import annotations

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


def test_thread_pools_are_set_once_for_the_process(torch_server):
    # Two CPU instances per model share the cores: one intra-op thread each on two cores.
    intra = max(1, cpu_count() // 2)
    assert f"torch: {intra} intra-op thread(s), 1 inter-op thread(s) for the whole process" in torch_server.log()


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
