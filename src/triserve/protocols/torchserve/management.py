"""TorchServe management API (port 8081): list, describe, register, scale, set-default, unregister.

Register and unregister are refused (405, as TorchServe >= 0.11) unless the operator passes
--enable-model-api. `url` is an archive's file name inside the model store; remote URLs only
for hosts the operator allowed. Workers are model instances: scaling reloads the model with the
new instance count (the old instances serve until the new ones are ready); 0 workers keeps the
model registered but not loaded. Models from Triton repositories are listed, described and
scaled too; their versions are numbers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.catalog import Registration
from triserve.core.instances import MAX_INSTANCES
from triserve.core.dataplane import DataPlane, ModelNotFound, NotReady, VersionNotFound
from triserve.core.model import Model
from triserve.errors import ServerError, StatusError, invalid, not_found
from triserve.options import DEFAULT_JOB_QUEUE_SIZE, ServerOptions
from triserve.protocols.torchserve import openapi
from triserve.protocols.torchserve.auth import RequireToken, TokenAuth, auth_for
from triserve.protocols.torchserve.metrics import CountResponses, metrics_for
from triserve.protocols.torchserve.forms import EXCEPTION_HANDLERS, flag, integer, json_response, parameters
from triserve.protocols.transport.http import HTTPFrontEnd

log = logging.getLogger("triserve")

_ENGINES = {"pytorch_libtorch": "Torch", "onnxruntime_onnx": "OnnxRuntime", "tensorflow_savedmodel": "TensorFlow",
            "torchserve_handler": "Torch"}


RUNTIMES = ("python", "python3", "LSP")  # TorchServe's Manifest.RuntimeType values


@dataclass
class StatusAnswer:
    """A management call's `{"status": message}` answer and its HTTP code (gRPC: OK)."""

    message: str
    code: int = 200


def _status(message: str, status: int = 200) -> Response:
    return json_response({"status": message}, status)


def _not_allowed() -> StatusError:
    return StatusError("Requested method is not allowed, please refer to API document.", 405, "MethodNotAllowedException")


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextlib.contextmanager
def _torchserve_errors(name: str, version: str | None = None) -> Iterator[None]:
    """The data plane's lookup errors as TorchServe words them."""
    try:
        yield
    except ModelNotFound:
        raise not_found(f"Model not found: {name}") from None
    except VersionNotFound:
        raise StatusError(f"Model version: {version} does not exist for model: {name}", 404,
                          "ModelVersionNotFoundException") from None


class TorchServeManagement:
    def __init__(self, dataplane: DataPlane, enable_model_api: bool = False, auth: TokenAuth | None = None) -> None:
        self.dataplane = dataplane
        self.enable_model_api = enable_model_api
        self.auth = auth

    def _model_url(self, name: str) -> str:
        if self.dataplane.is_registered(name):
            return self.dataplane.registrations(name)[self._registered_number(name, None)].url
        return name

    async def api_description(self, request: Request) -> Response:
        return json_response(openapi.management_api())

    async def model_api_description(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.dataplane.names():
            raise not_found(f"Model not found: {name}")
        return json_response(openapi.model_management_api(name))

    # -- list and describe --------------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        params = dict(request.query_params)
        return json_response(self.model_list(integer(params, "limit", 100), integer(params, "next_page_token", 0)))

    def model_list(self, limit: int, start: int) -> dict[str, Any]:
        """TorchServe's getModelList: a limit outside 0..100 is 100, a negative token 0."""
        if limit > 100 or limit < 0:
            limit = 100
        start = max(start, 0)
        names = self.dataplane.names()
        page = names[start : start + limit]
        result: dict[str, Any] = {}
        if start + limit <= len(names):  # TorchServe also gives a token for a page that ends the list
            result["nextPageToken"] = str(start + limit)
        result["models"] = [{"modelName": n, "modelUrl": self._model_url(n)} for n in page]
        return result

    def _describe_one(self, name: str, number: int, registration: Registration | None) -> dict[str, Any]:
        model: Model | None = self.dataplane.ready_model(name, number)
        if registration is not None:
            version = registration.version
            url = registration.url
            batch_size = registration.settings.batch_size
            delay = registration.settings.max_batch_delay_ms
            startup = registration.loaded_at_startup
            platform = model.platform if model is not None else ""
        else:
            assert model is not None
            version, url, startup, platform = str(number), name, True, model.platform
            batch_size = max(model.max_batch_size, 1)
            delay = model.config.dynamic_batching.max_queue_delay_microseconds // 1000
        workers = []
        pending = 0
        capacity = DEFAULT_JOB_QUEUE_SIZE
        if model is not None:
            started = model.loaded_at
            for i in range(model.instance_count):
                workers.append({
                    "id": str(9000 + i), "startTime": _iso(started), "status": "READY", "memoryUsage": 0,
                    "pid": os.getpid(), "gpu": any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in model.config.instance_group),
                    "gpuUsage": "N/A",
                })
            pending = model.stats.pending
            capacity = model.config.dynamic_batching.default_queue_policy.max_queue_size or capacity
        count = len(workers)
        return {
            "modelName": name,
            "modelVersion": version,
            "modelUrl": url,
            "engine": _ENGINES.get(platform, platform or "Torch"),
            "runtime": "python",
            "minWorkers": count,
            "maxWorkers": count,
            "batchSize": batch_size,
            "maxBatchDelay": delay,
            "responseTimeout": registration.settings.response_timeout_s if registration is not None else 120,
            "startupTimeout": registration.settings.startup_timeout_s if registration is not None else 120,
            "deviceType": "gpu" if workers and workers[0]["gpu"] else "cpu",
            "loadedAtStartup": startup,
            "workers": workers,
            "jobQueueStatus": {"remainingCapacity": max(capacity - pending, 0), "pendingRequests": pending},
        }

    async def describe(self, request: Request) -> Response:
        return json_response(self.description(request.path_params["model"], request.path_params.get("version")))

    def description(self, name: str, version: str | None) -> list[dict[str, Any]]:
        with _torchserve_errors(name, version):
            if self.dataplane.is_registered(name):
                registrations = self.dataplane.registrations(name)
                if version == "all":
                    numbers = sorted(registrations)
                else:
                    numbers = [self._registered_number(name, version)]
                return [self._describe_one(name, n, registrations[n]) for n in numbers]
            status = self.dataplane.status(name)
            if not status.ready_versions:
                return [{"modelName": name, "modelVersion": "", "modelUrl": name, "minWorkers": 0,
                         "maxWorkers": 0, "workers": [], "status": status.state or "UNLOADED",
                         "reason": status.reason}]
            if version == "all":
                numbers = list(status.ready_versions)
            else:
                self.dataplane.check_version(name, version)  # a version the model never had is 404
                numbers = [self.dataplane.resolve(name, version or "").version]
            return [self._describe_one(name, n, None) for n in numbers]

    def _registered_number(self, name: str, version: str | None) -> int:
        """A registered archive's version string (None: the default) -> its version number."""
        if not version:
            default = self.dataplane.default_version(name)
            assert default is not None
            return default
        aliases = self.dataplane.aliases(name)
        if version not in aliases:
            raise VersionNotFound(name, version)
        return aliases[version]

    # -- register and unregister --------------------------------------------------------------
    async def register(self, request: Request) -> Response:
        if not self.enable_model_api:
            raise _not_allowed()
        params = await parameters(request)
        answer = await self.register_params(params)
        return _status(answer.message, answer.code)

    async def register_params(self, params: dict[str, Any]) -> "StatusAnswer":
        """TorchServe's register: the parameters as its RegisterModelRequest reads them (an
        integer that does not parse is its default, `synchronous` is Java's parseBoolean)."""
        url = params.get("url")
        if url is None:
            raise invalid("Parameter url is required.")
        if not isinstance(url, str) or not url:
            raise not_found("Model not found in model store: empty url")
        runtime = params.get("runtime")
        if runtime is not None and runtime not in RUNTIMES:
            raise invalid(f"Invalid RuntimeType value: {runtime}")
        if runtime == "LSP":
            raise invalid("runtime LSP (TorchServe's C++ backend) is not supported; use python")
        settings: dict[str, Any] = {}
        for key, unset in (("batch_size", -1), ("max_batch_delay", -100), ("response_timeout", -1),
                           ("startup_timeout", -1)):
            value = integer(params, key, unset)
            if value != unset and (value > 0 or key != "batch_size"):
                settings[key] = value
        workers = integer(params, "initial_workers", -1)
        if workers != -1 or params.get("initial_workers") is not None:
            settings["initial_workers"] = max(workers, 0)  # TorchServe: <= 0 registers with 0 workers
        if params.get("handler"):
            settings["handler"] = str(params["handler"])
        synchronous = flag(params, "synchronous", True)
        registration = await self.dataplane.register(url, params.get("model_name") or None, settings, wait=synchronous)
        label = f'Model "{registration.name}" Version: {registration.version}'
        if self.dataplane.workers(registration.name) == 0:
            return StatusAnswer(f"{label} registered with 0 initial workers. Use scale workers API to add workers"
                                " for the model.")
        if not synchronous:
            return StatusAnswer("Processing worker updates...", 202)
        count = self.dataplane.resolve(registration.name).instance_count
        return StatusAnswer(f"{label} registered with {count} initial workers")

    async def unregister(self, request: Request) -> Response:
        if not self.enable_model_api:
            raise _not_allowed()
        return _status(await self.unregister_model(request.path_params["model"], request.path_params.get("version")))

    async def unregister_model(self, name: str, version: str | None) -> str:
        with _torchserve_errors(name, version):
            if version and self.dataplane.is_registered(name):
                self._registered_number(name, version)  # 404 for an unknown version
            await self.dataplane.unregister(name, version)
        return f'Model "{name}" unregistered'  # TorchServe's words, with a version too

    # -- scale and set-default ----------------------------------------------------------------
    async def scale(self, request: Request) -> Response:
        name = request.path_params["model"]
        params = await parameters(request)
        answer = await self.scale_params(name, request.path_params.get("version"), params)
        return _status(answer.message, answer.code)

    async def scale_params(self, name: str, version: str | None, params: dict[str, Any]) -> "StatusAnswer":
        """TorchServe's scale workers: `min_worker` (default 1), `max_worker` (default
        min_worker), `synchronous` (default false); a version also as `model_version`."""
        minimum = integer(params, "min_worker", 1)
        maximum = integer(params, "max_worker", minimum)
        if version is None and params.get("model_version"):
            version = str(params["model_version"])
        synchronous = flag(params, "synchronous", False)
        if maximum < minimum:
            raise invalid("max_worker cannot be less than min_worker.")
        with _torchserve_errors(name, version):
            if self.dataplane.is_registered(name):
                self._registered_number(name, version)  # 404 for an unknown version
            else:
                self.dataplane.status(name)  # 404 for an unknown model, before its workers are judged
                self.dataplane.check_version(name, version)
            if minimum > MAX_INSTANCES:  # refused before anything stops (TorchServe would try to start them)
                raise invalid(f"model '{name}' asks for {minimum} instances (workers); at most {MAX_INSTANCES} are allowed")
            if minimum < 0:  # TorchServe fails such an update with 500
                raise StatusError(f"Failed to start workers for model {name} version: {version}:"
                                  f" min_worker {minimum} is negative", 500, "InternalServerException")
            try:
                await self.dataplane.scale(name, minimum, wait=synchronous)
            except (ModelNotFound, VersionNotFound, NotReady):
                raise
            except ServerError as e:
                raise StatusError(f"Failed to start workers for model {name} version: {version}: {e.message}",
                                  500, "InternalServerException") from None
        if not synchronous:
            return StatusAnswer("Processing worker updates...", 202)
        suffix = f", version: {version}" if version else ""
        return StatusAnswer(f"Workers scaled to {minimum} for model: {name}{suffix}")

    async def set_default(self, request: Request) -> Response:
        return _status(self.set_default_version(request.path_params["model"], request.path_params["version"]))

    def set_default_version(self, name: str, version: str) -> str:
        with _torchserve_errors(name, version):
            self.dataplane.set_default(name, version)
        return f'Default version successfully updated for model "{name}" to "{version}"'

    async def refresh_token(self, request: Request) -> Response:
        if self.auth is None:
            raise StatusError("Requested resource is not found, please refer to API document.", 404,
                              "ResourceNotFoundException")
        kind = request.query_params.get("type")
        if kind not in ("management", "inference"):
            raise invalid("Parameter type must be 'management' or 'inference'")
        self.auth.refresh(kind)
        return _status(f"{kind} key refreshed; see {self.auth.key_file.name}")

    def app(self) -> Starlette:
        routes = [
            Route("/", self.api_description, methods=["OPTIONS"]),
            Route("/api-description", self.api_description, methods=["GET"]),
            Route("/models/{model}", self.model_api_description, methods=["OPTIONS"]),
            Route("/models/{model}/{version}", self.model_api_description, methods=["OPTIONS"]),
            Route("/models", self.list_models, methods=["GET"]),
            Route("/models", self.register, methods=["POST"]),
            Route("/models/{model}", self.describe, methods=["GET"]),
            Route("/models/{model}", self.scale, methods=["PUT"]),
            Route("/models/{model}", self.unregister, methods=["DELETE"]),
            Route("/models/{model}/{version}/set-default", self.set_default, methods=["PUT"]),
            Route("/models/{model}/{version}", self.describe, methods=["GET"]),
            Route("/models/{model}/{version}", self.scale, methods=["PUT"]),
            Route("/models/{model}/{version}", self.unregister, methods=["DELETE"]),
            Route("/token", self.refresh_token, methods=["GET"]),
        ]
        return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)


def frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> HTTPFrontEnd:
    auth = auth_for(dataplane, options.torchserve)
    app: Any = TorchServeManagement(dataplane, options.torchserve.enable_model_api, auth).app()
    if auth is not None:
        app = RequireToken(app, auth, "management")
    app = CountResponses(app, metrics_for(dataplane, options.torchserve.metrics_mode))
    return HTTPFrontEnd(app, options.host_of("torchserve_management"), port, options.http)
