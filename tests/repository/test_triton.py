"""Reading Triton model repositories: configs, versions, policies, broken models beside good ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import tritonclient.http as httpclient

from triserve.errors import ServerError
from triserve.protocols.kserve.config_json import to_json
from triserve.repository.config import parse_pbtxt
from triserve.repository.triton import read_model


def make_model(repo: Path, name: str, onnx_file: Path, config: str | None, versions=(1,)) -> Path:
    folder = repo / name
    for v in versions:
        (folder / str(v)).mkdir(parents=True)
        shutil.copyfile(onnx_file, folder / str(v) / "model.onnx")
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    return folder


def test_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nmax_batch_size: eight\n')
    with pytest.raises(ServerError) as e:
        parse_pbtxt(path)
    assert str(path) in e.value.message and "max_batch_size" in e.value.message


def test_unknown_field_is_an_error(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nmax_batch_sizes: 8\n')
    with pytest.raises(ServerError) as e:
        parse_pbtxt(path)
    assert "max_batch_sizes" in e.value.message


def test_name_must_match_folder(tmp_path):
    (tmp_path / "good" / "1").mkdir(parents=True)
    (tmp_path / "good" / "config.pbtxt").write_text('name: "other"')
    with pytest.raises(ServerError) as e:
        read_model("good", tmp_path / "good")
    assert "does not match" in e.value.message


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", [3]),
        ("version_policy: { latest: { num_versions: 2 } }", [2, 3]),
        ("version_policy: { all: { } }", [1, 2, 3]),
        ("version_policy: { specific: { versions: [1, 3] } }", [1, 3]),
    ],
)
def test_version_policy(tmp_path, policy, expected):
    folder = tmp_path / "m"
    for v in ("1", "2", "3", "04", "notes"):
        (folder / v).mkdir(parents=True)
    (folder / "config.pbtxt").write_text(policy)
    assert sorted(read_model("m", folder).versions) == expected


def test_config_json_keeps_int64_as_numbers(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('input { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] }\n'
                    'dynamic_batching { max_queue_delay_microseconds: 100 }')
    rendered = to_json(parse_pbtxt(path))
    assert rendered["input"][0]["dims"] == [-1, 3]
    assert rendered["dynamic_batching"]["max_queue_delay_microseconds"] == 100


@pytest.mark.slow
def test_repository_serves_good_models_beside_broken_ones(start_server, example_repo, tmp_path):
    onnx_file = example_repo / "efficientnet_lite0_onnx" / "1" / "model.onnx"
    repo_a, repo_b = tmp_path / "a", tmp_path / "b"
    # auto-completed from the graph: no config.pbtxt at all
    make_model(repo_a, "autocomplete", onnx_file, None)
    make_model(repo_a, "two_versions", onnx_file, 'platform: "onnxruntime_onnx" version_policy: { all { } }', versions=(1, 2))
    make_model(repo_b, "bad_syntax", onnx_file, "max_batch_size: [")
    make_model(repo_b, "wrong_dims", onnx_file, 'max_batch_size: 8 input { name: "input" data_type: TYPE_FP32 dims: [ 3, 100, 100 ] }'
               ' output { name: "output" data_type: TYPE_FP32 dims: [ 1000 ] }')
    corrupt = make_model(repo_b, "corrupt", onnx_file, None)
    (corrupt / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = start_server("--model-repository", repo_a, "--model-repository", repo_b)
    with httpclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready("autocomplete")
        config = client.get_model_config("autocomplete")
        assert config["max_batch_size"] == 4 and "dynamic_batching" in config
        assert config["input"][0]["dims"] == [3, 224, 224]
        assert client.get_model_metadata("two_versions")["versions"] == ["1", "2"]
        assert client.is_model_ready("two_versions", "1")
        for name in ("bad_syntax", "wrong_dims", "corrupt"):
            assert not client.is_model_ready(name)
        assert not client.is_server_ready()  # strict readiness: a broken model makes the server not ready
        index = {(row["name"], row.get("version")): row for row in client.get_model_repository_index()}
        assert "config.pbtxt" in index[("bad_syntax", None)]["reason"]
        assert "dims" in index[("wrong_dims", None)]["reason"]
        assert "onnxruntime could not load" in index[("corrupt", None)]["reason"]
        assert index[("autocomplete", "1")]["state"] == "READY"
    r = httpx.get(f"http://{server.url}/v2/models/corrupt")
    assert r.status_code == 503 and "corrupt" in r.json()["error"]
