"""A Catalog lists model names and reads a model's spec; each model source implements one."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tritonclient.grpc import model_config_pb2 as mc

from triserve.repository import triton
from triserve.repository.spec import ModelSpec


class Catalog(Protocol):
    def names(self) -> list[str]: ...

    def read(self, name: str, config: mc.ModelConfig | None = None) -> ModelSpec: ...


class TritonRepositories:
    """One or more Triton model repositories, merged (a name found twice is an error)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def names(self) -> list[str]:
        return list(triton.find_models(self.paths))

    def read(self, name: str, config: mc.ModelConfig | None = None) -> ModelSpec:
        models = triton.find_models(self.paths)
        return triton.read_model(name, models[name], config)

    def fingerprint(self, name: str) -> object:
        """Changes whenever a file of the model is added, removed or rewritten (poll mode)."""
        folder = triton.find_models(self.paths).get(name)
        return triton.folder_fingerprint(folder) if folder else None
