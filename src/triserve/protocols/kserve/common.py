"""What the v2 HTTP and gRPC front ends share: the extension list, model metadata, which models
the request parameters and the repository load arguments."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.core.dataplane import DataPlane, NotReady
from triserve.core.model import Model
from triserve.errors import ServerError, invalid
from triserve.protocols.kserve.config_json import parse_json

EXTENSIONS = [
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


@contextlib.contextmanager
def version_errors(dataplane: DataPlane, name: str, version: str | int | None) -> Iterator[None]:
    """Triton's errors for a version a request names: one the model never had is NOT_FOUND
    ("Request for unknown model: 'simple' version 99 is not found"); a known version that is
    not ready stays UNAVAILABLE ("... is not at ready state")."""
    try:
        yield
    except NotReady:
        if version is not None and version != "":
            dataplane.check_version(name, str(version))
        raise


def find_model(dataplane: DataPlane, name: str, version: str | int | None = None) -> Model:
    """The ready model a request names (version: number or ""), with Triton's errors."""
    with version_errors(dataplane, name, version):
        return dataplane.resolve(name, version)


def stats_models(dataplane: DataPlane, name: str, version: str) -> list[Model]:
    """The models a statistics request names, with Triton's errors."""
    with version_errors(dataplane, name, version):
        return dataplane.stats_models(name, version)


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


def sequence_options(params: dict[str, Any]) -> dict[str, Any]:
    """The request's `sequence_id` (uint64 or string; 0 or "": none), `sequence_start` and
    `sequence_end` parameters, as InferRequest fields."""
    sequence_id = params.get("sequence_id", 0)
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, (int, str)) or (
        isinstance(sequence_id, int) and not 0 <= sequence_id < 2**64
    ):
        raise invalid("Unable to parse 'sequence_id': expected an unsigned 64-bit integer or a string")
    flags = {}
    for name in ("sequence_start", "sequence_end"):
        value = params.get(name, False)
        if not isinstance(value, bool):
            raise invalid(f"Unable to parse '{name}': expected a boolean")
        flags[name] = value
    return {"sequence_id": sequence_id, **flags}


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
            raise invalid("the 'config' parameter must be the model configuration as JSON text")
        return parse_json(parameters["config"]), files
    if files:
        raise invalid("a 'config' parameter must be given with 'file:' parameters")
    return None, files


def poll_failure(name: str, error: ServerError) -> ServerError:
    """A load request refused before any model was built (its parameters, its `file:` names):
    Triton's "failed to load '<name>', failed to poll from model repository", then why."""
    if "failed to poll from model repository" in error.message:
        return error
    return ServerError(f"failed to load '{name}', failed to poll from model repository: {error.message}", error.code)


async def load_model(
    dataplane: DataPlane, name: str, config: mc.ModelConfig | None, files: dict[str, bytes]
) -> None:
    """The repository load: a model that fails to build answers Triton's "load failed for model
    '<name>': ..."; refusals before that (mode, poll) keep their own words."""
    try:
        await dataplane.load(name, config, files)
    except ServerError as e:
        if "failed to load" in e.message or "load / unload is not allowed" in e.message:
            raise
        raise ServerError(f"load failed for model '{name}': {e.message}", e.code) from None


def index_rows(dataplane: DataPlane, ready_only: bool) -> list[dict[str, str]]:
    """The repository index as Triton writes it: name, then version, state and reason when known."""
    rows = []
    for row in dataplane.index(ready_only):
        fields = {"name": row.name, "version": row.version, "state": row.state, "reason": row.reason}
        rows.append({k: v for k, v in fields.items() if v or k == "name"})
    return rows


def extension_state(dataplane: DataPlane, options: Any) -> tuple[Any, Any]:
    """The system shared memory registry and the tracer that the data plane's HTTP and gRPC
    front ends share (`options`: ServerOptions)."""
    from triserve.protocols.kserve import shared_memory, trace

    return (
        shared_memory.registry(dataplane, options.kserve.allow_client_shm),
        trace.tracer(dataplane, trace.parse_config(options.kserve.trace_config)),
    )
