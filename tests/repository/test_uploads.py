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
    assert list(uploads.root.rglob("*")) == []  # checked before anything is written


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


@pytest.mark.parametrize("path, words", [
    ("1/" + "a" * 300 + ".onnx", "longer than 255 bytes"),
    ("/".join(["d" * 200] * 6), "longer than 1024 bytes"),
    ("1/model\x00.onnx", "NUL"),
])
def test_paths_the_file_system_cannot_take_are_refused_before_anything_is_written(path, words):
    uploads = UploadedModels()
    with pytest.raises(ServerError) as e:
        uploads.write("uploaded", config(), {f"file:{path}": MODEL})
    assert e.value.code == Code.INVALID_ARG and words in e.value.message
    assert str(uploads.root) not in e.value.message and "triserve-override" not in e.value.message
    assert len(e.value.message) < 400  # the path is cut, not echoed whole
    assert list(uploads.root.iterdir()) == []


@pytest.mark.parametrize("name", ["..", ".", "a" * 300, "a/b"])
def test_model_names_that_are_not_folder_names_are_refused(name):
    uploads = UploadedModels()
    (uploads.root / "kept").mkdir()
    with pytest.raises(ServerError) as e:
        uploads.write(name, config(name[:100]), {"file:1/model.onnx": MODEL})
    assert e.value.code == Code.INVALID_ARG and "model name" in e.value.message
    assert str(uploads.root) not in e.value.message
    assert uploads.root.is_dir() and [p.name for p in uploads.root.iterdir()] == ["kept"]  # nothing removed


def test_a_file_that_cannot_be_written_is_named_without_the_server_folder():
    uploads = UploadedModels()
    with pytest.raises(ServerError) as e:  # "1" is written as a file, then needed as a folder
        uploads.write("uploaded", config(), {"file:1": MODEL, "file:1/model.onnx": MODEL})
    assert e.value.code == Code.INVALID_ARG and "'1/model.onnx' could not be written" in e.value.message
    assert str(uploads.root) not in e.value.message and "Errno" not in e.value.message


def test_messages_about_the_written_folder_do_not_name_where_it_is():
    only_version_2 = config()
    only_version_2.version_policy.specific.versions.append(2)
    uploads = UploadedModels()
    with pytest.raises(ServerError) as e:
        uploads.write("uploaded", only_version_2, {"file:1/model.onnx": MODEL})
    assert "found versions [1] in the uploaded files" in e.value.message
    assert str(uploads.root) not in e.value.message
