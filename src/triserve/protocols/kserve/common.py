"""What the v2 HTTP and gRPC front ends share: the extension list, model metadata, which models
the request parameters and the repository load arguments."""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.core.dataplane import DataPlane
from triserve.core.model import Model
from triserve.errors import invalid
from triserve.protocols.kserve.config_json import parse_json

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


def tensor_metadata(model: Model, tensor: mc.ModelInput | mc.ModelOutput) -> dict[str, Any]:
    """A tensor as v2 metadata describes it: the batch dimension is -1 when the model batches."""
    shape = list(tensor.dims)
    if model.max_batch_size > 0:
        shape = [-1, *shape]
    return {"name": tensor.name, "datatype": datatypes.name_of_config(tensor.data_type), "shape": shape}


def model_metadata(dataplane: DataPlane, model: Model) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": [m.version_str for m in dataplane.versions(model.name)],
        "platform": model.platform,
        "inputs": [tensor_metadata(model, t) for t in model.config.input],
        "outputs": [tensor_metadata(model, t) for t in model.config.output],
    }


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


def index_rows(dataplane: DataPlane, ready_only: bool) -> list[dict[str, str]]:
    """The repository index as Triton writes it: name, then version, state and reason when known."""
    rows = []
    for row in dataplane.index(ready_only):
        fields = {"name": row.name, "version": row.version, "state": row.state, "reason": row.reason}
        rows.append({k: v for k, v in fields.items() if v or k == "name"})
    return rows
