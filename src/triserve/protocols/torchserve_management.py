"""TorchServe management API (port 8081): list, describe, register, scale, set-default, unregister.

Register and unregister are refused (405, as TorchServe >= 0.11) unless the operator passes
--enable-model-api. `url` is an archive's file name inside the model store; remote URLs only
for hosts the operator allowed. Workers are model instances: scaling reloads the model with the
new instance count (the old instances serve until the new ones are ready); 0 workers keeps the
model registered but not loaded. Models from Triton repositories are listed, described and
scaled too; their versions are numbers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.manager import ModelManager
from triserve.core.model import Model
from triserve.errors import ServerError, invalid, not_found
from triserve.handlers import StatusError
from triserve.handlers.service import mar_catalog
from triserve.protocols.torchserve_auth import RequireToken, TokenAuth, auth_for
from triserve.protocols.torchserve_common import EXCEPTION_HANDLERS, flag, integer, json_response, parameters
from triserve.repository.mar import DEFAULT_JOB_QUEUE_SIZE, MarCatalog, Registration

log = logging.getLogger("triserve")

_ENGINES = {"pytorch_libtorch": "Torch", "onnxruntime_onnx": "OnnxRuntime", "tensorflow_savedmodel": "TensorFlow",
            "torchserve_handler": "Torch"}


def _status(message: str, status: int = 200) -> Response:
    return json_response({"status": message}, status)


def _not_allowed() -> StatusError:
    return StatusError("Requested method is not allowed, please refer to API document.", 405, "MethodNotAllowedException")


def _repository_conflict(name: str) -> StatusError:
    return StatusError(f"Model {name} is already served from a model repository", 409, "ConflictStatusException")


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TorchServeManagement:
    def __init__(self, manager: ModelManager, enable_model_api: bool = False, auth: TokenAuth | None = None) -> None:
        self.manager = manager
        self.catalog: MarCatalog | None = mar_catalog(manager)
        self.enable_model_api = enable_model_api
        self.auth = auth
        self._background: set[asyncio.Task] = set()

    # -- helpers ------------------------------------------------------------------------------
    def _archived(self, name: str) -> bool:
        return self.catalog is not None and name in self.catalog

    def _names(self) -> list[str]:
        names = set(self.manager.entries)
        if self.catalog is not None:
            names.update(self.catalog.registered())
        return sorted(names)

    def _spawn(self, work: Any) -> None:
        """Asynchronous (202) work; its failure is logged, as nobody waits for it."""

        async def run() -> None:
            try:
                await work
            except ServerError as e:
                log.error("%s", e.message)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _model_url(self, name: str) -> str:
        if self._archived(name):
            assert self.catalog is not None
            return self.catalog.registrations(name)[self.catalog.default_version(name)].url
        return name

    # -- list and describe --------------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        params = request.query_params
        limit = integer(dict(params), "limit", 100) or 100
        if limit > 100 or limit < 0:
            limit = 100
        start = integer(dict(params), "next_page_token", 0) or 0
        names = self._names()
        page = names[start : start + limit]
        result: dict[str, Any] = {}
        if start + limit < len(names):
            result["nextPageToken"] = str(start + limit)
        result["models"] = [{"modelName": n, "modelUrl": self._model_url(n)} for n in page]
        return json_response(result)

    def _describe_one(self, name: str, number: int, registration: Registration | None) -> dict[str, Any]:
        entry = self.manager.entries.get(name)
        model: Model | None = entry.versions.get(number) if entry is not None else None
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
        if self._archived(name):
            assert self.catalog is not None
            registrations = self.catalog.registrations(name)
            if version == "all":
                numbers = sorted(registrations)
            else:
                numbers = [self.catalog.resolve(name, version)]
            return json_response([self._describe_one(name, n, registrations[n]) for n in numbers])
        entry = self.manager.entries.get(name)
        if entry is None:
            raise not_found(f"Model not found: {name}")
        if not entry.versions:
            return json_response([{"modelName": name, "modelVersion": "", "modelUrl": name, "minWorkers": 0,
                                   "maxWorkers": 0, "workers": [], "status": entry.state or "UNLOADED",
                                   "reason": entry.reason}])
        if version == "all":
            numbers = sorted(entry.versions)
        else:
            numbers = [self.manager.get(name, version or "").version]
        return json_response([self._describe_one(name, n, None) for n in numbers])

    # -- register and unregister --------------------------------------------------------------
    async def register(self, request: Request) -> Response:
        if not self.enable_model_api:
            raise _not_allowed()
        params = await parameters(request)
        url = params.get("url")
        if not url or not isinstance(url, str):
            raise invalid("Parameter url is required.")
        if self.catalog is None:
            raise invalid("no model store is configured (start the server with --model-store DIR)")
        if params.get("handler"):
            raise invalid("the 'handler' parameter is not supported; the archive's handler is used")
        name = params.get("model_name") or None
        if name is not None and name in self.manager.entries and not self._archived(name):
            raise _repository_conflict(name)
        synchronous = flag(params, "synchronous", True)
        loop = asyncio.get_running_loop()
        registration = await loop.run_in_executor(None, self.catalog.prepare, url, name, params)
        if registration.name in self.manager.entries and not self._archived(registration.name):
            self.catalog.discard([registration])
            raise _repository_conflict(registration.name)
        try:
            self.catalog.add(registration)
        except ServerError:
            self.catalog.discard([registration])
            raise
        workers = self.catalog.workers(registration.name)
        label = f'Model "{registration.name}" Version: {registration.version}'
        log.info("registered %s from %s", label, url)
        if workers == 0:
            return _status(f"{label} registered with 0 initial workers. Use scale workers API to add workers for the model.")
        if not synchronous:
            self._spawn(self._load_or_forget(registration))
            return _status("Processing worker updates...", 202)
        await self._load_or_forget(registration)
        count = self.manager.get(registration.name).instance_count
        return _status(f"{label} registered with {count} initial workers")

    async def _load_or_forget(self, registration: Registration) -> None:
        """Start the new version; if it cannot start, it is unregistered again."""
        assert self.catalog is not None
        try:
            await self.manager.load(registration.name)
        except ServerError as e:
            removed = self.catalog.remove(registration.name, registration.version)
            if registration.name not in self.catalog:
                await self.manager.remove(registration.name)
            self.catalog.discard(removed)
            raise StatusError(
                f"Failed to start workers for model {registration.name} version: {registration.version}: {e.message}",
                500,
            ) from None

    async def unregister(self, request: Request) -> Response:
        if not self.enable_model_api:
            raise _not_allowed()
        name = request.path_params["model"]
        version = request.path_params.get("version")
        if not self._archived(name):
            if name in self.manager.entries:
                raise invalid(f"model {name} comes from a model repository; unload it with the repository API")
            raise not_found(f"Model not found: {name}")
        assert self.catalog is not None
        removed = self.catalog.remove(name, version)
        if name in self.catalog:
            await self.manager.load(name)  # the remaining versions
        else:
            await self.manager.remove(name)
        self.catalog.discard(removed)
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
        if self._archived(name):
            assert self.catalog is not None
            self.catalog.resolve(name, version)  # 404 for an unknown version
        elif name not in self.manager.entries:
            raise not_found(f"Model not found: {name}")
        if not flag(params, "synchronous", False):
            self._spawn(self._scale(name, minimum))
            return _status("Processing worker updates...", 202)
        await self._scale(name, minimum)
        suffix = f", version: {version}" if version else ""
        return _status(f"Workers scaled to {minimum} for model: {name}{suffix}")

    async def _scale(self, name: str, workers: int) -> None:
        if self._archived(name):
            assert self.catalog is not None
            self.catalog.set_workers(name, workers)
            if workers == 0:
                await self.manager.remove(name)
            else:
                await self.manager.load(name)
        else:
            await self.manager.scale(name, workers)

    async def set_default(self, request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params["version"]
        if not self._archived(name):
            raise not_found(f"Model not found: {name}" if name not in self.manager.entries
                            else f"Model version: {version} does not exist for model: {name}")
        assert self.catalog is not None
        self.catalog.set_default(name, version)
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


def frontend(server: Any, port: int) -> Any:
    from triserve.server import HTTPFrontEnd

    extra = server.options.extra
    auth = auth_for(server)
    app: Any = TorchServeManagement(server.manager, bool(extra.get("enable_model_api")), auth).app()
    if auth is not None:
        app = RequireToken(app, auth, "management")
    host = extra.get("torchserve_hosts", {}).get("torchserve_management", server.options.host)
    return HTTPFrontEnd(app, host, port)
