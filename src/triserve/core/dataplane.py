"""The data plane: the one object every front end calls.

Queries (names, status, the model a request names), lifecycle (load, unload, register and
unregister archives, scale, reconfigure a catalog), and inference (tensors, or request rows
through the model's processor). Each lifecycle's rollback rule is written here once; the
protocol adapters decode the wire, call this, encode the answer and map its errors.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, AsyncIterator, Awaitable, Coroutine

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve.core import decoupled, processors
from triserve.core.catalog import Catalog, Registration, Registry
from triserve.core.manager import ModelEntry, ModelManager
from triserve.core.model import Model
from triserve.core.processors import Reply, Row
from triserve.core.status import LOADING, UNAVAILABLE, IndexRow, ModelStatus, VersionStatus
from triserve.core.types import InferRequest, InferResponse
from triserve.errors import Code, ServerError, StatusError, invalid

log = logging.getLogger("triserve")


class ModelNotFound(ServerError):
    """No model of that name, in any catalog."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Request for unknown model: '{name}' is not found", Code.NOT_FOUND)
        self.name = name


class VersionNotFound(ServerError):
    """The model has no version of that number or name."""

    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"Request for unknown model: '{name}' version {version} is not found", Code.NOT_FOUND)
        self.name = name
        self.version = version


class NotReady(ServerError):
    """The model (or the version asked for) is known but not ready to serve."""

    def __init__(self, name: str, version: int | None = None, reason: str = "") -> None:
        if version is None:
            message = f"Request for unknown model: '{name}' has no available versions" + (f" ({reason})" if reason else "")
        else:
            message = f"Request for unknown model: '{name}' version {version} is not at ready state"
        super().__init__(message, Code.UNAVAILABLE)
        self.name = name
        self.version = version
        self.reason = reason


def batches(size: int, limit: int) -> list[slice]:
    """`size` items cut into runs of at most `limit` (limit 0: one run)."""
    if not limit or size <= limit:
        return [slice(0, size)]
    return [slice(i, min(i + limit, size)) for i in range(0, size, limit)]


# A split request queues all its parts at once, on the event loop: this bounds that work (and
# the queue one request can fill) whatever the instance count of a request.
MAX_SPLIT_PARTS = 1024


def max_rows(model: Model) -> int:
    """The most request rows one predict takes: the batch size (1 for a model that does not batch)."""
    return max(model.max_batch_size, 1)


class DataPlane:
    def __init__(
        self,
        manager: ModelManager,
        strict_readiness: bool = True,
        registry: Registry | None = None,
        configurable: Catalog | None = None,
    ) -> None:
        self.manager = manager
        self.strict_readiness = strict_readiness
        self.registry = registry  # where archives are registered at run time (TorchServe)
        self.configurable = configurable  # the catalog a config reload replaces (TF Serving)
        self._background: set[asyncio.Task] = set()
        self.serving = True  # False while the server starts or drains: never ready then

    # -- health ---------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self, strict: bool | None = None) -> bool:
        """Strict: every model that was asked to load is ready. Otherwise: the server is up."""
        return self.serving and self.manager.ready(self.strict_readiness if strict is None else strict)

    @property
    def control_mode(self) -> str:
        """none, poll or explicit (only explicit allows a client's load and unload)."""
        return self.manager.control_mode

    # -- queries --------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every model the server knows, also registered archives scaled to 0 workers."""
        names = set(self.manager.entries)
        if self.registry is not None:
            names.update(self.registry.registered())
        return sorted(names)

    def is_registered(self, name: str) -> bool:
        """Whether the model is a registered archive (TorchServe's register API manages it)."""
        return self.registry is not None and name in self.registry.registered()

    def default_version(self, name: str) -> int | None:
        """The version a request without one gets (None: the newest ready one)."""
        entry = self.manager.entries.get(name)
        catalog = entry.catalog if entry is not None else self.registry if self.is_registered(name) else None
        return catalog.default_version(name) if catalog is not None else None

    def workers(self, name: str) -> int | None:
        """A registered archive's worker count (None: the core's default, or not an archive)."""
        return self.registry.workers(name) if self.is_registered(name) and self.registry is not None else None

    def registrations(self, name: str) -> dict[int, Registration]:
        if not self.is_registered(name):
            raise ModelNotFound(name)
        assert self.registry is not None
        return self.registry.registrations(name)

    def status(self, name: str) -> ModelStatus:
        entry = self.manager.entries.get(name)
        if entry is None:
            if self.is_registered(name):
                return ModelStatus(name, UNAVAILABLE, "0 workers")
            raise ModelNotFound(name)
        versions = {v: VersionStatus(state, reason) for v, (state, reason) in entry.version_states.items()}
        if not versions and entry.state in (LOADING, UNAVAILABLE):
            # A first load still running, or failed: the versions it was for.
            versions = {v: VersionStatus(entry.state, entry.reason) for v in entry.tried_versions}
        return ModelStatus(name, entry.state, entry.reason, versions, tuple(sorted(entry.versions)))

    def index(self, ready_only: bool = False) -> list[IndexRow]:
        return self.manager.index(ready_only)

    def aliases(self, name: str) -> dict[str, int]:
        """Version names of the model (TF Serving labels, TorchServe version strings) -> numbers."""
        entry = self.manager.entries.get(name)
        catalog = entry.catalog if entry is not None else self.registry if self.is_registered(name) else None
        return catalog.aliases(name) if catalog is not None else {}

    def version_number(self, name: str, version: str | int | None) -> int | None:
        """A version as a request names it: a number, an alias, or ""/None for the default."""
        if version is None or version == "":
            return None
        if isinstance(version, int):
            return version
        aliases = self.aliases(name)
        if version in aliases:
            return aliases[version]
        if version.isdigit():
            return int(version)
        if aliases:
            raise VersionNotFound(name, version)
        raise invalid(f"model version '{version}' of model '{name}' is not a number")

    def model(self, name: str, version: int | None = None) -> Model:
        """The ready model version (None: the catalog's default, else the newest ready one)."""
        entry = self._entry(name)
        if entry is None:
            if self.is_registered(name):
                raise NotReady(name, version, "0 workers")
            raise ModelNotFound(name)
        if not entry.versions:
            raise NotReady(name, None, entry.reason)
        if version is None:
            default = entry.catalog.default_version(name) if entry.catalog is not None else None
            version = default if default is not None else max(entry.versions)
        model = entry.versions.get(version)
        if model is None:
            raise NotReady(name, version)
        return model

    def resolve(self, name: str, version: str | int | None = None) -> Model:
        """The ready model a request names, by version number, alias or neither."""
        return self.model(name, self.version_number(name, version))

    def ready_model(self, name: str, version: int) -> Model | None:
        entry = self._entry(name)
        return entry.versions.get(version) if entry is not None else None

    def versions(self, name: str) -> list[Model]:
        """The ready versions of a model, oldest first."""
        entry = self._entry(name)
        return [entry.versions[v] for v in sorted(entry.versions)] if entry is not None else []

    def models(self) -> list[Model]:
        """Every ready model version."""
        return self.manager.models()

    def stats_models(self, name: str = "", version: str = "") -> list[Model]:
        """No name: every model; a name: its ready versions, or the one version asked for."""
        if not name:
            return self.models()
        if version:
            return [self.resolve(name, version)]
        self.model(name)  # raises for an unknown or unavailable model
        return self.versions(name)

    def _entry(self, name: str) -> ModelEntry | None:
        entry = self.manager.entries.get(name)
        if entry is None or (not entry.versions and entry.state == ""):
            return None  # unknown, or never asked to load
        return entry

    # -- lifecycle ------------------------------------------------------------------------
    async def load(self, name: str, config: mc.ModelConfig | None = None, files: dict[str, bytes] | None = None) -> None:
        """A client's load (repository API): only in explicit control mode; the old versions
        keep serving if the new ones fail."""
        self._check_explicit()
        await self.manager.load(name, config, files)

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        self._check_explicit()
        await self.manager.unload(name, unload_dependents)

    def _check_explicit(self) -> None:
        mode = self.manager.control_mode
        if mode != "explicit":
            # Triton's words in both modes (its clients and QA tests match them), then this server's mode.
            raise ServerError(
                "explicit model load / unload is not allowed if polling is enabled"
                f" (model control mode is {mode.upper()}; --model-control-mode explicit allows it)",
                Code.UNAVAILABLE,
            )

    async def register(self, url: str, model_name: str | None, params: dict[str, Any], wait: bool = True) -> Registration:
        """Register an archive as a new model version and start it (`wait`: before returning).
        A version that cannot start is unregistered again."""
        registry = self._registry()
        if model_name and model_name in self.manager.entries and not self.is_registered(model_name):
            raise _repository_conflict(model_name)
        loop = asyncio.get_running_loop()
        registration = await loop.run_in_executor(None, functools.partial(registry.prepare, url, model_name, params))
        if registration.name in self.manager.entries and not self.is_registered(registration.name):
            registry.discard([registration])
            raise _repository_conflict(registration.name)
        try:
            registry.add(registration)
        except ServerError:
            registry.discard([registration])
            raise
        log.info("registered model '%s' version %s from %s", registration.name, registration.version, url)
        if registry.workers(registration.name) != 0:
            await self._run(self._start(registration), wait)
        return registration

    async def _start(self, registration: Registration) -> None:
        """Start a new registration's workers; a start that fails, or takes longer than its
        startup timeout (TorchServe's startup_timeout), unregisters it again."""
        registry = self._registry()
        loop = asyncio.get_running_loop()
        started = loop.time()
        loaded = False
        try:
            await self.manager.load(registration.name)
            loaded = True
            took = loop.time() - started
            if took > registration.settings.startup_timeout_s:
                raise ServerError(f"the start took {took:.3f} s, more than startup_timeout"
                                  f" {registration.settings.startup_timeout_s} s", Code.UNAVAILABLE)
        except ServerError as e:
            removed = registry.remove(registration.name, registration.version)
            if registration.name not in registry.registered():
                await self.manager.remove(registration.name)
            elif loaded:
                await self.manager.load(registration.name)  # without the version that was too slow
            registry.discard(removed)
            raise StatusError(
                f"Failed to start workers for model {registration.name} version: {registration.version}: {e.message}",
                500,
            ) from None

    async def unregister(self, name: str, version: str | None = None) -> None:
        """Remove one registered version (None: all); the remaining versions reload."""
        if not self.is_registered(name):
            if name in self.manager.entries:
                raise invalid(f"model {name} comes from a model repository; unload it with the repository API")
            raise ModelNotFound(name)
        registry = self._registry()
        removed = registry.remove(name, version)
        if name in registry.registered():
            await self.manager.load(name)
        else:
            await self.manager.remove(name)
        registry.discard(removed)

    def check_version(self, name: str, version: str | None) -> None:
        """Raise VersionNotFound unless the model has that version (None: any)."""
        if version is not None and version != "" and self.version_number(name, version) not in self._known_versions(name):
            raise VersionNotFound(name, version)

    def _known_versions(self, name: str) -> set[int]:
        if self.is_registered(name):
            return set(self.registrations(name))
        return {*self.status(name).versions, *self.status(name).ready_versions}

    async def scale(self, name: str, workers: int, wait: bool = True) -> None:
        """Run the model with `workers` instances (0: stop it, keeping it registered); the old
        instances serve until the new ones are ready."""
        if not self.is_registered(name) and self._entry(name) is None:
            raise ModelNotFound(name)
        await self._run(self._scale(name, workers), wait)

    async def _scale(self, name: str, workers: int) -> None:
        if self.is_registered(name):
            registry = self._registry()
            registry.set_workers(name, workers)
            if workers == 0:
                await self.manager.remove(name)
            else:
                await self.manager.load(name)
        else:
            if workers and not self.versions(name):
                await self.manager.load(name)  # scaled to 0 before: start it from its catalog again
            await self.manager.scale(name, workers)

    def set_default(self, name: str, version: str) -> None:
        if not self.is_registered(name):
            raise ModelNotFound(name) if self._entry(name) is None else VersionNotFound(name, version)
        self._registry().set_default(name, version)

    async def reconfigure(self, config: Any) -> None:
        """Replace the configurable catalog's config whole: models it leaves out unload, new ones
        load, changed ones reload. A config that does not parse changes nothing."""
        if self.configurable is None:
            raise ServerError(
                "this server has no TF Serving model config to reload; start it with --model-config-file"
                " or --model-base-path",
                Code.UNSUPPORTED,
            )
        self.configurable.replace(config)
        await self.manager.poll([self.configurable])
        failed = [
            f"{name}: {self.manager.entries[name].reason}"
            for name in self.configurable.names()
            if name in self.manager.entries and not self.manager.entries[name].versions
        ]
        if failed:
            raise ServerError("failed to load model(s): " + "; ".join(failed), Code.INTERNAL)

    def _registry(self) -> Registry:
        if self.registry is None:
            raise invalid("no model store is configured (start the server with --model-store DIR)")
        return self.registry

    async def _run(self, work: Coroutine[Any, Any, None], wait: bool) -> None:
        """Await `work`, or run it in the background, where its failure is logged (nobody waits)."""
        if wait:
            await work
            return

        async def run() -> None:
            try:
                await work
            except ServerError as e:
                log.error("%s", e.message)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- inference ------------------------------------------------------------------------
    def infer(self, model: Model, request: InferRequest, split: bool = False) -> Awaitable[InferResponse]:
        """Validate and queue now; the awaitable gives the response. Call it right after
        finding the model (no await between), so a reload cannot retire it first.

        `split`: a batch above the model's max_batch_size runs as several requests (queued at
        once, so the dynamic batcher may run them together) whose answers are joined in order.
        """
        sizes = {a.shape[0] if a.ndim else 0 for a in request.inputs.values()}
        batch = sizes.pop() if len(sizes) == 1 else 0
        parts = batches(batch, model.max_batch_size) if split else [slice(None)]
        if len(parts) > MAX_SPLIT_PARTS:
            raise invalid(
                f"a batch of {batch} needs {len(parts)} runs of model '{model.name}' (max batch size"
                f" {model.max_batch_size}); at most {MAX_SPLIT_PARTS * model.max_batch_size} per request"
            )
        if len(parts) == 1:
            return model.infer(request)
        pending = [
            model.infer(InferRequest(
                {k: a[part] for k, a in request.inputs.items()}, request.outputs, request.id,
                request.priority, request.timeout_us, request.parameters,
            ))
            for part in parts
        ]
        return _joined(model, request, pending)

    def is_decoupled(self, model: Model) -> bool:
        """Whether the model answers with many responses per request (streams only)."""
        return decoupled.is_decoupled(model.config)

    def stream(self, model: Model, request: InferRequest) -> AsyncIterator[InferResponse | ServerError]:
        """A decoupled model's responses, each as it comes (a ServerError for an error response)."""
        scheduler = model.scheduler
        if not isinstance(scheduler, decoupled.DecoupledScheduler):
            raise invalid(f"model '{model.name}' is not decoupled")
        return scheduler.stream(model, request)

    async def predict(self, model: Model, rows: list[Row]) -> list[Reply]:
        """Request rows through the model's processor (JSON tensors for models without one) as
        one request (one job): one answer per row, in order; at most max_rows(model) rows."""
        if len(rows) > max_rows(model):
            raise invalid(f"too many rows: the request has {len(rows)} rows, more than the batch size of model"
                          f" '{model.name}' ({max_rows(model)})")
        processor = model.processor or processors.tensors()
        loop = asyncio.get_running_loop()  # preprocessing (image decoding) runs off the event loop
        inputs = await loop.run_in_executor(None, functools.partial(processor.preprocess, model, rows))
        response = await model.infer(InferRequest(inputs))
        return [a if isinstance(a, Reply) else Reply(a) for a in processor.postprocess(model, response.outputs)]


async def _joined(model: Model, request: InferRequest, pending: list[Awaitable[InferResponse]]) -> InferResponse:
    answers = await asyncio.gather(*pending)
    outputs = {name: np.concatenate([a.outputs[name] for a in answers]) for name in answers[0].outputs}
    return InferResponse(model.name, model.version_str, request.id, outputs)


def _repository_conflict(name: str) -> StatusError:
    return StatusError(f"Model {name} is already served from a model repository", 409, "ConflictStatusException")
