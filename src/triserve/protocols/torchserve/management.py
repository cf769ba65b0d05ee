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
from typing import Any, Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.catalog import Registration
from triserve.core.dataplane import DataPlane, ModelNotFound, NotReady, VersionNotFound
from triserve.core.model import Model
from triserve.errors import ServerError, StatusError, invalid, not_found
from triserve.options import DEFAULT_JOB_QUEUE_SIZE, ServerOptions
from triserve.protocols.torchserve.auth import RequireToken, TokenAuth, auth_for
from triserve.protocols.torchserve.forms import EXCEPTION_HANDLERS, flag, integer, json_response, parameters
from triserve.protocols.transport.http import HTTPFrontEnd

log = logging.getLogger("triserve")

_ENGINES = {"pytorch_libtorch": "Torch", "onnxruntime_onnx": "OnnxRuntime", "tensorflow_savedmodel": "TensorFlow",
            "torchserve_handler": "Torch"}


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

    # -- list and describe --------------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        params = request.query_params
        limit = integer(dict(params), "limit", 100) or 100
        if limit > 100 or limit < 0:
            limit = 100
        start = integer(dict(params), "next_page_token", 0) or 0
        names = self.dataplane.names()
        page = names[start : start + limit]
        result: dict[str, Any] = {}
        if start + limit < len(names):
            result["nextPageToken"] = str(start + limit)
        result["models"] = [{"modelName": n, "modelUrl": self._model_url(n)} for n in page]
        return json_response(result)

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
            "responseTimeout": 120,
            "startupTimeout": 120,
            "deviceType": "gpu" if workers and workers[0]["gpu"] else "cpu",
            "loadedAtStartup": startup,
            "workers": workers,
            "jobQueueStatus": {"remainingCapacity": max(capacity - pending, 0), "pendingRequests": pending},
        }

    async def describe(self, request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        with _torchserve_errors(name, version):
            if self.dataplane.is_registered(name):
                registrations = self.dataplane.registrations(name)
                if version == "all":
                    numbers = sorted(registrations)
                else:
                    numbers = [self._registered_number(name, version)]
                return json_response([self._describe_one(name, n, registrations[n]) for n in numbers])
            status = self.dataplane.status(name)
            if not status.ready_versions:
                return json_response([{"modelName": name, "modelVersion": "", "modelUrl": name, "minWorkers": 0,
                                       "maxWorkers": 0, "workers": [], "status": status.state or "UNLOADED",
                                       "reason": status.reason}])
            if version == "all":
                numbers = list(status.ready_versions)
            else:
                self.dataplane.check_version(name, version)  # a version the model never had is 404
                numbers = [self.dataplane.resolve(name, version or "").version]
            return json_response([self._describe_one(name, n, None) for n in numbers])

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
        url = params.get("url")
        if not url or not isinstance(url, str):
            raise invalid("Parameter url is required.")
        if params.get("handler"):
            raise invalid("the 'handler' parameter is not supported; the archive's handler is used")
        synchronous = flag(params, "synchronous", True)
        registration = await self.dataplane.register(url, params.get("model_name") or None, params, wait=synchronous)
        label = f'Model "{registration.name}" Version: {registration.version}'
        if self.dataplane.workers(registration.name) == 0:
            return _status(f"{label} registered with 0 initial workers. Use scale workers API to add workers for the model.")
        if not synchronous:
            return _status("Processing worker updates...", 202)
        count = self.dataplane.resolve(registration.name).instance_count
        return _status(f"{label} registered with {count} initial workers")

    async def unregister(self, request: Request) -> Response:
        if not self.enable_model_api:
            raise _not_allowed()
        name = request.path_params["model"]
        version = request.path_params.get("version")
        with _torchserve_errors(name, version):
            if version and self.dataplane.is_registered(name):
                self._registered_number(name, version)  # 404 for an unknown version
            await self.dataplane.unregister(name, version)
        if version:
            return _status(f'Model "{name}" version: {version} unregistered')
        return _status(f'Model "{name}" unregistered')

    # -- scale and set-default ----------------------------------------------------------------
    async def scale(self, request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        params = await parameters(request)
        minimum = integer(params, "min_worker", 1)
        maximum = integer(params, "max_worker", minimum)
        assert minimum is not None and maximum is not None
        if minimum < 0:
            raise invalid("min_worker cannot be negative.")
        if maximum < minimum:
            raise invalid("max_worker cannot be less than min_worker.")
        synchronous = flag(params, "synchronous", False)
        with _torchserve_errors(name, version):
            if self.dataplane.is_registered(name):
                self._registered_number(name, version)  # 404 for an unknown version
            else:
                self.dataplane.check_version(name, version)
            await self.dataplane.scale(name, minimum, wait=synchronous)
        if not synchronous:
            return _status("Processing worker updates...", 202)
        suffix = f", version: {version}" if version else ""
        return _status(f"Workers scaled to {minimum} for model: {name}{suffix}")

    async def set_default(self, request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params["version"]
        with _torchserve_errors(name, version):
            self.dataplane.set_default(name, version)
        return _status(f'Default version successfully updated for model "{name}" to "{version}"')

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
    return HTTPFrontEnd(app, options.host_of("torchserve_management"), port, options.http)
