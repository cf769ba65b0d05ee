"""What every model source produces: a name, a folder, a (maybe partial) config and its version folders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc


@dataclass
class ModelSpec:
    name: str
    path: Path  # the model folder; label files are relative to it
    config: mc.ModelConfig
    # version -> the model file or folder the backend loads for it
    versions: dict[int, Path] = field(default_factory=dict)
    # Where the spec came from, for messages ("config.pbtxt", "archive x.mar", ...)
    source: str = ""
    # version -> the processor (TorchServe handler) that turns request rows into tensors and
    # tensors into answers, and the folder its files are in; none: tensors in, tensors out
    processors: dict[int, ProcessorSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessorSpec:
    handler: str  # a built-in handler name (image_classifier, base_handler) or "custom"
    folder: Path  # the handler's files (index_to_name.json, the archive's code)
