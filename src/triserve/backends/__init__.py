"""Backends, one module per platform, imported only when a model of that platform loads.

A backend module provides:
    BACKEND: str                 the Triton backend name ("onnxruntime")
    DEFAULT_FILENAME: str        the model file inside a version folder ("model.onnx")
    autocomplete(config, model_file) -> None
        fill inputs, outputs and max_batch_size the config leaves out, from the model file
    load(config, model_file, settings) -> a model object with
        run(inputs: dict[str, ndarray], outputs: list[str]) -> dict[str, ndarray]
        close() -> None
      and optionally (models with named signatures, as TF SavedModels)
        signatures: dict[str, triserve.signatures.Signature]
        run(inputs, outputs, signature_name) for one of them, keyed by its own keys
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.errors import invalid, unavailable

log = logging.getLogger("triserve")

# platform -> (module, what to install when the framework is missing)
PLATFORMS = {
    "onnxruntime_onnx": ("triserve.backends.onnxruntime_onnx", "triserve[onnx]"),
    "pytorch_libtorch": ("triserve.backends.pytorch_libtorch", "triserve[torch]"),
    "tensorflow_savedmodel": ("triserve.backends.tensorflow_savedmodel", "triserve[tensorflow]"),
    "openvino": ("triserve.backends.openvino", "triserve[openvino]"),  # Triton names no platform: backend only
    "python": ("triserve.backends.python", "triserve"),  # model.py in its own process (backends/python/)
}
BACKEND_TO_PLATFORM = {
    "onnxruntime": "onnxruntime_onnx",
    "pytorch": "pytorch_libtorch",
    "tensorflow": "tensorflow_savedmodel",
    "openvino": "openvino",
    "python": "python",
}
# How a version folder's content reveals the platform when the config names none.
_FILE_TO_PLATFORM = {
    "model.onnx": "onnxruntime_onnx",
    "model.pt": "pytorch_libtorch",
    "model.savedmodel": "tensorflow_savedmodel",
    "model.xml": "openvino",  # OpenVINO IR
    "saved_model.pb": "tensorflow_savedmodel",
    "model.py": "python",  # as Triton: a model.py without a config is a Python model
}


class _Execution(threading.local):
    """What the scheduler tells a backend about the execution running on this thread."""

    deadline: float = 0.0  # time.monotonic() by which the requests' timeout ends (0: none)
    alone: bool = False  # no other model execution was running in this process when this one started


EXECUTION = _Execution()


@dataclass(frozen=True)
class InstanceSettings:
    """Where and how one model instance runs."""

    device: str = "cpu"  # "cpu" or "cuda:<n>"
    threads: int = 1  # intra-op threads for this instance
    # intra-op threads for an execution that runs alone (EXECUTION.alone): one request in flight
    # gets every core (0: always `threads`)
    wide_threads: int = 0
    # BLS: what a model calls other models with, infer(model, version, inputs, output_names) -> outputs
    # (blocking, from any thread but the event loop's; raises ServerError). The core hands it over.
    models: Callable[[str, int | None, dict, list[str] | None], dict] | None = field(default=None, compare=False)
    # What the instances of one model version share: the core hands the same dict to each
    # (the ONNX Runtime backend keeps its one wide session there).
    shared: dict[str, Any] = field(default_factory=dict, compare=False)


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def count_parameter(config: mc.ModelConfig, key: str, default: int) -> int:
    """A positive integer from config `parameters`; the key in any case (Triton's backends differ)."""
    for name, value in config.parameters.items():
        if name.lower() == key.lower():
            text = value.string_value.strip()
            if not text.isdigit() or int(text) < 1:
                raise invalid(f"parameter '{name}' of model '{config.name}' must be a positive integer, got '{text}'")
            return int(text)
    return default


class ProcessThreads:
    """A framework's process-wide thread pools (by default its intra-op and inter-op pools): the
    first model to load sets them and later models keep them (a model asking for other counts
    gets a warning).

    `apply(*counts)` sets the framework's pools and returns the counts it really has (a
    framework that already started may keep its own)."""

    def __init__(self, framework: str, first: str, apply: Callable[..., tuple[int, ...]],
                 pools: tuple[str, ...] = ("intra-op", "inter-op")) -> None:
        self.framework = framework  # "torch", for the log lines
        self.first = first  # what sets them, for the warning: "TorchScript model"
        self.pools = pools  # their names, for the log lines
        self._apply = apply
        self._lock = threading.Lock()
        self.counts: tuple[int, ...] | None = None  # one per pool, once set

    def request(self, model: str, *counts: int) -> None:
        with self._lock:
            if self.counts is None:
                self.counts = self._apply(*counts)
                log.info("%s: %s for the whole process", self.framework,
                         ", ".join(f"{n} {pool} thread(s)" for n, pool in zip(self.counts, self.pools)))
            elif self.counts != counts:
                log.warning(
                    "model '%s' asks for %s %s threads, but %s's thread pools are process-wide and"
                    " already set to %s by the first %s; keeping those",
                    model, " / ".join(f"{n} {pool}" for n, pool in zip(counts, self.pools)), self.framework,
                    self.framework, " / ".join(map(str, self.counts)), self.first,
                )


def check_dims(config: mc.ModelConfig, kind: str, tensor: mc.ModelInput | mc.ModelOutput, model_dims: list[int]) -> None:
    """The config's dims (its `reshape` when given) must fit the framework's shape, -1 matching
    anything; with max_batch_size > 0 the framework's first dim must be the dynamic batch dim."""
    dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
    batched = config.max_batch_size > 0
    if batched:
        if not model_dims or model_dims[0] != -1:
            raise invalid(
                f"unable to load model '{config.name}': max_batch_size is {config.max_batch_size}"
                f" but {kind} '{tensor.name}' has no dynamic batch dimension in the model"
                f" (model shape {model_dims}); set max_batch_size to 0"
            )
        model_dims = model_dims[1:]
    if not datatypes.dims_fit(model_dims, dims):
        raise invalid(
            f"unable to load model '{config.name}': {kind} '{tensor.name}' dims {dims} in the"
            f" configuration do not match the model's {model_dims}"
            + (" (without the batch dimension)" if batched else "")
        )


def platform_of(config: mc.ModelConfig, version_dir: Path | None) -> str:
    """The platform a config names (by platform or backend), else the one its files reveal."""
    if config.platform:
        if config.platform not in PLATFORMS:
            raise invalid(
                f"unsupported platform '{config.platform}' for model '{config.name}';"
                f" supported: {', '.join(PLATFORMS)}"
            )
        return config.platform
    if config.backend:
        if config.backend not in BACKEND_TO_PLATFORM:
            raise invalid(
                f"unsupported backend '{config.backend}' for model '{config.name}';"
                f" supported: {', '.join(BACKEND_TO_PLATFORM)}"
            )
        return BACKEND_TO_PLATFORM[config.backend]
    if version_dir is not None:
        for filename, platform in _FILE_TO_PLATFORM.items():
            if (version_dir / filename).exists():
                return platform
    raise invalid(
        f"model '{config.name}' names no platform or backend, and no model.onnx, model.pt"
        f" or model.savedmodel was found in {version_dir} to guess it from"
    )


def get(platform: str) -> ModuleType:
    """Import a backend; a missing framework disables only its platform."""
    module_name, extra = PLATFORMS[platform]
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise unavailable(
            f"platform '{platform}' is not available: {e}. Install it with: pip install '{extra}'"
        ) from None
