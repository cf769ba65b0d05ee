"""What the v2 HTTP and gRPC front ends share: the extension list, model metadata, which models
a statistics request names, the request parameters and the repository load arguments."""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.manager import ModelManager
from triserve.core.model import Model
from triserve.errors import invalid
from triserve.repository.config import parse_json

EXTENSIONS = [
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
]


def model_metadata(manager: ModelManager, model: Model) -> dict[str, Any]:
    entry = manager.entries[model.name]
    return {
        "name": model.name,
        "versions": [str(v) for v in sorted(entry.versions)],
        "platform": model.platform,
        "inputs": [model.tensor_metadata(t) for t in model.config.input],
        "outputs": [model.tensor_metadata(t) for t in model.config.output],
    }


def stats_models(manager: ModelManager, name: str = "", version: str = "") -> list[Model]:
    """No name: every model; a name: its ready versions, or the one version asked for."""
    if not name:
        return manager.models()
    if version:
        return [manager.get(name, version)]
    manager.get(name)  # raises for an unknown or unavailable model
    return list(manager.entries[name].versions.values())


def class_count(output: str, value: object) -> int:
    """The `classification` parameter of a requested output: how many top classes to answer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalid(f"output '{output}': 'classification' must be a non-negative integer")
    return value


def schedule_options(params: dict[str, Any]) -> tuple[int, int | None]:
    """The request's `priority` (0: the model's default) and `timeout` (microseconds) parameters."""
    priority = params.get("priority", 0)
    timeout = params.get("timeout")
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise invalid("parameter 'priority' must be a non-negative integer")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise invalid("parameter 'timeout' must be a non-negative integer (microseconds)")
    return priority, timeout


def load_arguments(parameters: dict[str, Any]) -> tuple[mc.ModelConfig | None, dict[str, Any]]:
    """A repository load request's parameters to (config override or None, `file:` contents)."""
    files = {k: v for k, v in parameters.items() if k.startswith("file:")}
    if "config" in parameters:
        if not isinstance(parameters["config"], (str, bytes)):
            raise invalid("failed to load model: the 'config' parameter must be the model configuration as JSON text")
        return parse_json(parameters["config"]), files
    if files:
        raise invalid("failed to load model: a 'config' parameter must be given with 'file:' parameters")
    return None, files
