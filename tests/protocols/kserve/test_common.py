"""What the v2 HTTP and gRPC front ends share: extensions, model metadata, the request
parameters and the repository load arguments, and the repository index rows."""

from __future__ import annotations

import json

import pytest

from tests.inprocess import SIMPLE_CONFIG, simple_onnx, tiny_repository, triton_dataplane
from triserve.errors import Code, ServerError
from triserve.protocols.kserve.common import (
    EXTENSIONS,
    class_count,
    index_rows,
    load_arguments,
    model_metadata,
    schedule_options,
    tensor_metadata,
)


def error(call, *args) -> ServerError:
    with pytest.raises(ServerError) as e:
        call(*args)
    return e.value


def test_the_extensions_are_tritons_names():
    assert EXTENSIONS == [
        "classification",
        "sequence",
        "model_repository",
        "model_repository(unload_dependents)",
        "schedule_policy",
        "model_configuration",
        "system_shared_memory",
        "binary_tensor_data",
        "parameters",
        "statistics",
        "trace",
        "logging",
    ]


@pytest.mark.anyio
async def test_metadata_puts_a_batch_dimension_first_when_the_model_batches(tmp_path):
    repository = tiny_repository(tmp_path)
    # `simple` without batching: the dims are the whole shape, with no -1 before them
    simple_onnx(repository / "unbatched" / "1" / "model.onnx")
    unbatched = SIMPLE_CONFIG.replace('"simple"', '"unbatched"').replace("max_batch_size: 8", "max_batch_size: 0")
    (repository / "unbatched" / "config.pbtxt").write_text(unbatched.replace("dims: [ 16 ]", "dims: [ 2, 16 ]"))
    async with triton_dataplane(repository) as dataplane:
        simple, flat = dataplane.resolve("simple"), dataplane.resolve("unbatched")
        assert tensor_metadata(simple, simple.config.input[0]) == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
        assert tensor_metadata(flat, flat.config.input[0]) == {"name": "INPUT0", "datatype": "INT32", "shape": [2, 16]}
        assert tensor_metadata(flat, flat.config.output[1]) == {"name": "OUTPUT1", "datatype": "INT32", "shape": [2, 16]}
        meta = model_metadata(dataplane, dataplane.resolve("scores"))
        assert meta == {
            "name": "scores",
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 5]}],
            "outputs": [{"name": "OUTPUT", "datatype": "FP32", "shape": [-1, 5]}],
        }


@pytest.mark.parametrize("value", [0, 1, 5])
def test_class_count_takes_non_negative_integers(value):
    assert class_count("y", value) == value


@pytest.mark.parametrize("value", [-1, "3", 2.0, True, None])
def test_class_count_refuses_anything_else(value):
    e = error(class_count, "y", value)
    assert e.code == Code.INVALID_ARG
    assert e.message == "output 'y': 'classification' must be a non-negative integer"


@pytest.mark.parametrize(
    "params, expected",
    [({}, (0, None)), ({"priority": 2}, (2, None)), ({"timeout": 0}, (0, 0)), ({"priority": 1, "timeout": 500}, (1, 500))],
)
def test_schedule_options(params, expected):
    assert schedule_options(params) == expected


@pytest.mark.parametrize(
    "params, words",
    [
        ({"priority": -1}, "'priority' must be a non-negative integer"),
        ({"priority": "1"}, "'priority' must be a non-negative integer"),
        ({"priority": False}, "'priority' must be a non-negative integer"),
        ({"timeout": -1}, "'timeout' must be a non-negative integer (microseconds)"),
        ({"timeout": 1.5}, "'timeout' must be a non-negative integer (microseconds)"),
        ({"timeout": True}, "'timeout' must be a non-negative integer (microseconds)"),
    ],
)
def test_schedule_options_refuse_what_is_not_a_count(params, words):
    assert words in error(schedule_options, params).message


def test_load_arguments_without_parameters():
    assert load_arguments({}) == (None, {})
    assert load_arguments({"unrelated": 1}) == (None, {})


def test_load_arguments_with_a_config_and_files():
    text = json.dumps({"max_batch_size": 2})
    for given in (text, text.encode()):
        config, files = load_arguments({"config": given, "file:1/model.onnx": b"onnx", "other": 1})
        assert config is not None and config.max_batch_size == 2
        assert files == {"file:1/model.onnx": b"onnx"}


def test_load_arguments_refuse_files_without_a_config_and_configs_that_are_not_text():
    assert "a 'config' parameter must be given with 'file:' parameters" in error(load_arguments, {"file:1/m": b""}).message
    assert "must be the model configuration as JSON text" in error(load_arguments, {"config": {"max_batch_size": 2}}).message
    assert "failed to parse model config JSON" in error(load_arguments, {"config": "{"}).message


@pytest.mark.anyio
async def test_index_rows_leave_out_what_is_not_known(tmp_path):
    repository = tiny_repository(tmp_path)
    async with triton_dataplane(repository, control_mode="explicit", load_models=["simple"]) as dataplane:
        assert index_rows(dataplane, ready_only=False) == [
            {"name": "doubler"},
            {"name": "scores"},
            {"name": "simple", "version": "1", "state": "READY"},
        ]
        assert index_rows(dataplane, ready_only=True) == [{"name": "simple", "version": "1", "state": "READY"}]
        await dataplane.unload("simple")
        assert index_rows(dataplane, ready_only=False)[2] == {
            "name": "simple", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"
        }
        assert index_rows(dataplane, ready_only=True) == []
