"""config.pbtxt parsing, into tritonclient's real ModelConfig message."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triserve.errors import invalid


def parse_pbtxt(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt; a syntax error or unknown field names the file and the problem."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as e:
        raise invalid(f"failed to parse {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise invalid(f"failed to read {path}: {e}") from None
    return config
