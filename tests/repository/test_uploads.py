"""The repository API's uploads: `file:` contents written as a model folder and read as a spec."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.inprocess import SIMPLE_CONFIG
from triserve.errors import Code, ServerError
from triserve.repository.uploads import UploadedModels

MODEL = b"the model's bytes"


def config(name: str = "uploaded") -> mc.ModelConfig:
    return text_format.Parse(SIMPLE_CONFIG.replace('"simple"', f'"{name}"'), mc.ModelConfig())


@pytest.mark.parametrize("path", ["../1/model.onnx", "1/../../model.onnx", "/1/model.onnx", ""])
def test_paths_that_leave_the_model_folder_are_refused(path):
    uploads = UploadedModels()
    with pytest.raises(ServerError) as e:
        uploads.write("evil", config("evil"), {f"file:{path}": MODEL})
    assert e.value.code == Code.INVALID_ARG and "must stay inside the model folder" in e.value.message
    assert [p.relative_to(uploads.root) for p in uploads.root.rglob("*")] == [Path("evil")]  # nothing written


def test_files_without_a_version_folder_are_refused():
    with pytest.raises(ServerError) as e:
        UploadedModels().write("flat", config("flat"), {"file:model.onnx": MODEL})
    assert e.value.code == Code.NOT_FOUND and "no numeric version folder" in e.value.message


def test_files_need_a_config():
    with pytest.raises(ServerError) as e:
        UploadedModels().write("bare", None, {"file:1/model.onnx": MODEL})
    assert "a 'config' parameter must come with 'file:' parameters" in e.value.message


def test_a_good_upload_reads_as_a_spec():
    uploads = UploadedModels()
    spec = uploads.write("uploaded", config(), {"file:1/model.onnx": MODEL, "file:labels.txt": b"a\nb\n"})
    assert spec.name == "uploaded" and spec.config.max_batch_size == 8
    assert spec.path == uploads.root / "uploaded"
    assert spec.versions == {1: spec.path / "1"}
    assert (spec.versions[1] / "model.onnx").read_bytes() == MODEL
    assert (spec.path / "labels.txt").read_text() == "a\nb\n"


def test_an_upload_replaces_the_folder_of_the_previous_one():
    uploads = UploadedModels()
    uploads.write("uploaded", config(), {"file:1/model.onnx": MODEL})
    spec = uploads.write("uploaded", config(), {"file:2/model.onnx": MODEL})
    assert spec.versions == {2: spec.path / "2"} and not (spec.path / "1").exists()


def test_the_config_name_must_match_the_model_name():
    with pytest.raises(ServerError) as e:
        UploadedModels().write("uploaded", config("other"), {"file:1/model.onnx": MODEL})
    assert "does not match its directory name 'uploaded'" in e.value.message


def test_the_folders_go_with_the_uploads():
    uploads = UploadedModels()
    uploads.write("uploaded", config(), {"file:1/model.onnx": MODEL})
    root = uploads.root
    del uploads
    gc.collect()
    assert not root.exists()
