"""Model configurations as JSON: the repository load API's `config` parameter in, and the
model configuration extension's answer out, written as Triton writes it."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor, json_format
from tritonclient.grpc import model_config_pb2 as mc

from triserve.errors import invalid

_INT64_TYPES = {
    descriptor.FieldDescriptor.TYPE_INT64,
    descriptor.FieldDescriptor.TYPE_UINT64,
    descriptor.FieldDescriptor.TYPE_SINT64,
    descriptor.FieldDescriptor.TYPE_FIXED64,
    descriptor.FieldDescriptor.TYPE_SFIXED64,
}


def parse_json(text: str | bytes) -> mc.ModelConfig:
    """A config given as JSON (the repository load API's `config` parameter)."""
    config = mc.ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as e:
        raise invalid(f"failed to parse model config JSON: {e}") from None
    return config


def to_json(config: mc.ModelConfig) -> dict[str, Any]:
    """Render as Triton does: proto field names, every field, enums as names, int64 as numbers."""
    data = json_format.MessageToDict(
        config,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return _int64_to_numbers(data, config.DESCRIPTOR)


def _int64_to_numbers(data: dict[str, Any], desc: descriptor.Descriptor) -> dict[str, Any]:
    for key, value in data.items():
        field = desc.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for v in value.values():
                    _int64_to_numbers(v, value_field.message_type)
            elif value_field.type in _INT64_TYPES:
                data[key] = {k: int(v) for k, v in value.items()}
        elif field.message_type is not None:
            for item in value if isinstance(value, list) else [value]:
                _int64_to_numbers(item, field.message_type)
        elif field.type in _INT64_TYPES:
            data[key] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return data
