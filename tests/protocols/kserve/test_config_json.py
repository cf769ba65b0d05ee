"""Model configurations as JSON: the load API's `config` parameter in, the model configuration
extension's answer out, written as Triton writes it (proto field names, every field, enum names,
int64 values as numbers)."""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triserve.errors import Code, ServerError
from triserve.protocols.kserve.config_json import parse_json, to_json

CONFIG = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, -1, 224 ] } ]
output [ { name: "y" data_type: TYPE_STRING dims: [ 1000 ] label_filename: "labels.txt" } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  priority_queue_policy { key: 1 value: { default_timeout_microseconds: 5000 max_queue_size: 10 } }
}
optimization { cuda { graph_spec [ { batch_size: 2 input { key: "x" value: { dim: [ 3, 224 ] } } } ] } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 3, 1, 224 ] zero_data: true } } } ]
parameters { key: "threads" value: { string_value: "2" } }
"""


def config() -> mc.ModelConfig:
    return text_format.Parse(CONFIG, mc.ModelConfig())


def test_parse_json_reads_text_and_bytes():
    text = json.dumps({"name": "m", "max_batch_size": 4, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}]})
    for given in (text, text.encode()):
        parsed = parse_json(given)
        assert (parsed.name, parsed.max_batch_size) == ("m", 4)
        assert list(parsed.input[0].dims) == [3] and parsed.input[0].data_type == mc.TYPE_FP32


def test_parse_json_takes_protobuf_json_spellings_too():
    parsed = parse_json('{"maxBatchSize": "4", "input": [{"name": "x", "dims": ["3"]}]}')
    assert parsed.max_batch_size == 4 and list(parsed.input[0].dims) == [3]


@pytest.mark.parametrize(
    "text",
    ["{not json", '{"max_batch_size": "many"}', '{"no_such_field": 1}', '{"input": [{"data_type": "TYPE_FP99"}]}'],
    ids=["malformed", "wrong type", "unknown field", "unknown enum"],
)
def test_parse_json_refuses_what_is_not_a_model_config(text):
    with pytest.raises(ServerError) as e:
        parse_json(text)
    assert e.value.code == Code.INVALID_ARG
    assert e.value.message.startswith("failed to parse model config JSON: ")


def test_to_json_uses_proto_field_names_and_enum_names():
    data = to_json(config())
    assert data["max_batch_size"] == 8
    assert data["input"][0]["data_type"] == "TYPE_FP32" and data["input"][0]["format"] == "FORMAT_NCHW"
    assert data["output"][0]["data_type"] == "TYPE_STRING"
    assert data["instance_group"][0]["kind"] == "KIND_CPU"


def test_to_json_writes_every_field_even_when_unset():
    data = to_json(mc.ModelConfig(name="m"))
    assert data["max_batch_size"] == 0
    assert data["input"] == [] and data["parameters"] == {} and data["model_warmup"] == []
    assert data["backend"] == "" and data["default_model_filename"] == ""


def test_to_json_writes_int64_values_as_numbers_at_any_depth():
    data = to_json(config())
    assert data["input"][0]["dims"] == [3, -1, 224]
    assert data["output"][0]["dims"] == [1000]
    batching = data["dynamic_batching"]
    assert batching["preferred_batch_size"] == [4, 8]
    assert batching["max_queue_delay_microseconds"] == 100
    # map<uint64, ModelQueuePolicy>: keys stay JSON strings, values' int64 fields become numbers
    policy = batching["priority_queue_policy"]["1"]
    assert (policy["default_timeout_microseconds"], policy["max_queue_size"]) == (5000, 10)
    graph = data["optimization"]["cuda"]["graph_spec"][0]
    assert graph["batch_size"] == 2 and graph["input"]["x"]["dim"] == [3, 224]
    assert data["model_warmup"][0]["inputs"]["x"]["dims"] == [3, 1, 224]
    assert data["parameters"] == {"threads": {"string_value": "2"}}


def test_to_json_is_plain_json_that_parses_back_to_the_same_config():
    original = config()
    text = json.dumps(to_json(original))
    assert parse_json(text) == original
