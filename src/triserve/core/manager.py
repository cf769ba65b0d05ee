"""The model manager: loads model versions from catalogs, tracks their state, swaps reloads in atomically."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from tritonclient.grpc import model_config_pb2 as mc

from triserve import backends
from triserve.core import decoupled, ensemble, processors
from triserve.core.catalog import Catalog, Uploads
from triserve.core.instances import complete_instance_groups, instance_settings
from triserve.core.memory import release_free_memory
from triserve.core.model import Model, find_label_file, read_labels
from triserve.core.sequence import SequencePolicy
from triserve.core.spec import ModelSpec
from triserve.core.types import InferRequest, RequestedOutput
from triserve.core.status import LOADING, READY, UNAVAILABLE, UNLOADED, UNLOADING, IndexRow
from triserve.core import warmup
from triserve.core.warmup import BatchCalibration, run_warmup
from triserve.errors import Code, ServerError, internal, invalid, not_found, unavailable

log = logging.getLogger("triserve")


@dataclass
class ModelEntry:
    """What the server knows of one model name."""

    name: str
    catalog: Catalog | None  # None: loaded from the repository API's files only
    versions: dict[int, Model] = field(default_factory=dict)  # the ready ones, newest last
    state: str = ""  # "" when never loaded
    reason: str = ""
    version_states: dict[int, tuple[str, str]] = field(default_factory=dict)
    fingerprint: object = None  # what the catalog showed at the last load (poll mode compares)
    tried_versions: tuple[int, ...] = ()  # what the last load attempt was for
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelManager:
    """The models of every catalog and their versions' lifecycles. Front ends reach it only
    through the data plane (core/dataplane.py)."""

    def __init__(
        self,
        catalogs: list[Catalog],
        control_mode: str = "none",
        uploads: Uploads | None = None,
        allow_custom_code: bool = False,
        calibration: BatchCalibration | None = None,
    ) -> None:
        self.catalogs = catalogs
        self.calibration = calibration or BatchCalibration()  # the dynamic batcher's cap (core/warmup.py)
        self.control_mode = control_mode
        self.uploads = uploads  # where the repository API's `file:` contents are written
        self.allow_custom_code = allow_custom_code  # TorchServe archives' handler code may run
        self.entries: dict[str, ModelEntry] = {}
        self._waiting: dict[str, set[str]] = {}  # ensembles loading now -> the models they wait for
        # One loader thread: models load one after another, so the batch-size measurement a load
        # ends with (core/warmup.py) is not skewed by another model loading beside it.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="loader")

    # -- discovery ----------------------------------------------------------------------
    def refresh_names(self) -> None:
        """Find model names in the catalogs; a new name starts as never loaded."""
        for catalog in self.catalogs:
            for name in catalog.names():
                if name not in self.entries:
                    self.entries[name] = ModelEntry(name, catalog)

    # -- lookup -------------------------------------------------------------------------
    def models(self) -> list[Model]:
        return [m for e in self.entries.values() for m in e.versions.values()]

    def ready(self, strict: bool = True) -> bool:
        """Strict: every model that was asked to load is ready, unless unloaded since (as in
        Triton). Otherwise: the server is up."""
        return not strict or all(e.versions for e in self.entries.values() if e.state and e.reason != UNLOADED)

    def index(self, ready_only: bool = False) -> list[IndexRow]:
        rows: list[IndexRow] = []
        for name in sorted(self.entries):
            entry = self.entries[name]
            if entry.version_states:
                for version, (state, reason) in sorted(entry.version_states.items()):
                    rows.append(IndexRow(name, str(version), state, reason))
            else:
                rows.append(IndexRow(name, "", entry.state, entry.reason))
        return [r for r in rows if r.state == READY] if ready_only else rows

    # -- lifecycle ----------------------------------------------------------------------
    async def load(
        self, name: str, config: mc.ModelConfig | None = None, files: dict[str, bytes] | None = None
    ) -> None:
        """Load (or reload) every version the policy selects; on failure the old versions keep serving.

        `config` replaces the model's own config; `files` (with `config`) are the model's files,
        as the repository API's `file:<path>` parameters give them.
        """
        entry = self.entries.get(name)
        if entry is None:
            self.refresh_names()
            entry = self.entries.get(name)
        if entry is None and files and self.uploads is not None:
            entry = self.entries[name] = ModelEntry(name, None)  # a model that exists only as uploaded files
        if entry is None or (entry.catalog is None and not files) or (files and self.uploads is None):
            raise not_found(f"failed to load '{name}', failed to poll from model repository")
        async with entry.lock:
            if not entry.versions:
                entry.state, entry.reason = LOADING, ""
            loop = asyncio.get_running_loop()
            started = time.monotonic()
            try:
                if files:
                    assert self.uploads is not None
                    _refuse_code(name, config, files, self.allow_custom_code)
                    spec = await loop.run_in_executor(self._loader, self.uploads.write, name, config, files)
                else:
                    entry.fingerprint = await loop.run_in_executor(self._loader, entry.catalog.fingerprint, name)
                    spec = await loop.run_in_executor(self._loader, entry.catalog.read, name, config)
                entry.tried_versions = tuple(sorted(spec.versions))
                ensemble_versions = await self._ensemble_versions(spec) if ensemble.is_ensemble(spec.config) else {}
                try:
                    built = {} if ensemble_versions else await loop.run_in_executor(
                        self._loader, _build, spec, self.allow_custom_code, self._caller(loop), self.calibration)
                    _check_streams(built)
                except ServerError as e:
                    e.message = _from_model_folder(e.message, spec)
                    e.args = (e.message,)
                    raise
            except ServerError as e:
                self._failed(entry, e.message)
                raise
            except Exception as e:  # a broken model must never take the server down
                log.exception("loading model '%s'", name)
                reason = f"unexpected {type(e).__name__} (the server log has the details)"  # no reprs, no paths
                self._failed(entry, reason)
                raise internal(f"failed to load '{name}': {reason}") from None
            new_versions = {}
            for version, b in sorted(built.items()):
                new_versions[version] = Model(
                    b.config, version, b.labels, [i.run for i in b.instances], [i.close for i in b.instances],
                    b.batch_limit, b.processor, b.sequence,
                    signatures=getattr(b.instances[0], "signatures", None) if b.instances else None,
                )
            new_versions.update(ensemble_versions)
            for version, model in new_versions.items():
                if decoupled.is_decoupled(model.config) and version in built:  # many responses per request
                    await model.scheduler.close()
                    model.scheduler = decoupled.DecoupledScheduler(
                        model.config, [i.run_stream for i in built[version].instances], model.stats)
            old = entry.versions
            entry.versions = new_versions  # the atomic swap: new requests see only the new set
            entry.state, entry.reason = READY, ""
            # Versions the reload retired stay listed as unloaded, as in Triton's repository index.
            entry.version_states = {
                **{v: (UNAVAILABLE, UNLOADED) for v in entry.version_states if v not in new_versions},
                **{v: (READY, "") for v in new_versions},
            }
            elapsed = time.monotonic() - started
            for version, model in new_versions.items():
                model.load_seconds = elapsed
                log.info(
                    "loaded model '%s' version %d (%s, %d instance(s)) in %.2fs",
                    name, version, model.platform, model.instance_count, elapsed,
                )
        await _close_all(old.values())

    def _failed(self, entry: ModelEntry, reason: str) -> None:
        log.error("failed to load model '%s': %s", entry.name, reason)
        if entry.versions:
            # A failed reload leaves the serving versions in place.
            return
        entry.state, entry.reason = UNAVAILABLE, reason
        entry.version_states = {}

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Unload a model, and the ensembles that use it (they cannot run without it);
        `unload_dependents`: an ensemble's composing models too."""
        entry = self.entries.get(name)
        if entry is None:
            raise not_found(f"failed to unload '{name}': model is not known")
        composing = [ensemble.composing_models(m.config) for m in entry.versions.values() if ensemble.is_ensemble(m.config)]
        async with entry.lock:
            old = entry.versions
            entry.version_states = {v: (UNLOADING, "") for v in old}
            entry.versions = {}
            await _close_all(old.values())
            entry.state, entry.reason = UNAVAILABLE, UNLOADED
            entry.version_states = {v: (UNAVAILABLE, UNLOADED) for v in old}
            log.info("unloaded model '%s'", name)
        for other in [e for e in self.entries.values() if e.versions and any(
                ensemble.is_ensemble(m.config) and name in ensemble.composing_models(m.config) for m in e.versions.values())]:
            log.info("unloading ensemble '%s': its composing model '%s' was unloaded", other.name, name)
            await self.unload(other.name)
        if unload_dependents:
            for dep in dict.fromkeys(d for names in composing for d in names):
                if dep in self.entries and self.entries[dep].versions:
                    await self.unload(dep, unload_dependents=True)

    # -- models calling models (ensembles, BLS) -------------------------------------------
    def serving(self, name: str, version: int | None = None) -> Model:
        """The ready version a step or a model's own request names (None: the default one)."""
        entry = self.entries.get(name)
        if entry is None or not entry.versions:
            raise unavailable(f"Failed for execute the inference request. Model '{name}' is not ready.")
        if version is None:
            default = entry.catalog.default_version(name) if entry.catalog is not None else None
            version = default if default in entry.versions else max(entry.versions)
        model = entry.versions.get(version)
        if model is None:
            raise unavailable(f"Failed for execute the inference request. Model '{name}' version {version} is not ready.")
        return model

    def _caller(self, loop: asyncio.AbstractEventLoop) -> Callable:
        """What a backend calls other models with (BLS), from its own threads: blocking, through
        the models' schedulers on the event loop."""

        def infer(name: str, version: int | None, inputs: dict, outputs: list[str] | None) -> dict:
            async def call() -> dict:
                model = self.serving(name, version)
                request = InferRequest(inputs, [RequestedOutput(n) for n in outputs] if outputs else None)
                return (await model.infer(request)).outputs

            return asyncio.run_coroutine_threadsafe(call(), loop).result()

        return infer

    async def _ensemble_versions(self, spec: ModelSpec) -> dict[int, Model]:
        """Load an ensemble's composing models first (waiting for those loading), check its graph,
        and make its versions."""
        name = spec.name
        config = mc.ModelConfig()
        config.CopyFrom(spec.config)
        deps = ensemble.composing_models(config)
        self._waiting[name] = set(deps)
        try:
            for dep in deps:
                if self._waits_on(dep, name):
                    raise invalid(f"ensemble '{name}': composing model '{dep}' depends on '{name}' (a cycle)")
                entry = self.entries.get(dep)
                if entry is None:
                    self.refresh_names()
                    entry = self.entries.get(dep)
                if entry is None:
                    raise invalid(f"ensemble '{name}': composing model '{dep}' is in no model repository")
                if entry.lock.locked():
                    async with entry.lock:
                        pass  # its load (or unload) finishes first
                if not entry.versions:
                    try:
                        await self.load(dep)
                    except ServerError as e:
                        raise invalid(f"ensemble '{name}': composing model '{dep}' failed to load: {e.message}") from None
        finally:
            self._waiting.pop(name, None)
        ensemble.check(config, self.serving)
        if config.version_policy.WhichOneof("policy_choice") is None:
            config.version_policy.latest.num_versions = 1
        labels = read_labels(spec.path, config)
        versions = {}
        for version in spec.versions:
            model = Model(config, version, labels, [], [])
            model.scheduler = ensemble.EnsembleScheduler(config, self.serving, model.stats, model.output_names)
            versions[version] = model
        return versions

    def _waits_on(self, name: str, target: str) -> bool:
        """Whether loading `name` waits (through ensembles loading now) on `target`."""
        stack, seen = [name], set()
        while stack:
            n = stack.pop()
            if n == target:
                return True
            if n not in seen:
                seen.add(n)
                stack.extend(self._waiting.get(n, ()))
        return False

    async def remove(self, name: str) -> None:
        """Unload and forget a model its catalog no longer lists (a TorchServe unregister)."""
        if name in self.entries:
            await self.unload(name)
            self.entries.pop(name, None)
        self.refresh_names()  # a name the catalog still lists comes back as never loaded

    async def scale(self, name: str, count: int) -> None:
        """Reload a model with `count` instances (0: unload); the old instances serve until then."""
        if count == 0:
            await self.unload(name)
            return
        entry = self.entries.get(name)
        if entry is None or not entry.versions:
            raise unavailable(f"model '{name}' is not loaded; it cannot be scaled")
        config = mc.ModelConfig()
        config.CopyFrom(entry.versions[max(entry.versions)].config)
        kind = config.instance_group[0].kind if config.instance_group else mc.ModelInstanceGroup.KIND_CPU
        del config.instance_group[:]
        config.instance_group.add(kind=kind, count=count)
        await self.load(name, config)

    async def load_all(self, names: list[str] | None = None) -> list[str]:
        """Load the named models ("*" or None: every model the catalogs list); returns those that failed."""
        self.refresh_names()
        wanted = list(self.entries) if names is None or "*" in names else names
        results = await asyncio.gather(*(self.load(n) for n in wanted), return_exceptions=True)
        return [n for n, r in zip(wanted, results) if isinstance(r, BaseException)]

    async def start(self, load_models: list[str] | None = None) -> list[str]:
        """Initial loads by control mode: explicit loads only `load_models`; none and poll load all."""
        if self.control_mode == "explicit":
            return await self.load_all(load_models or [])
        return await self.load_all()

    async def poll(self, catalogs: list[Catalog] | None = None) -> None:
        """One repository poll (of `catalogs`, default all): load new models, reload changed ones,
        unload removed ones. A catalog's optional refresh() runs first (re-reading a config file)."""
        loop = asyncio.get_running_loop()
        polled = self.catalogs if catalogs is None else catalogs
        try:
            for c in polled:
                await loop.run_in_executor(self._loader, c.refresh)
            found = {n: c for c in polled for n in await loop.run_in_executor(self._loader, c.names)}
        except ServerError as e:
            log.error("repository poll failed: %s", e.message)
            return
        for name in [n for n, e in self.entries.items() if n not in found and (catalogs is None or e.catalog in polled)]:
            entry = self.entries[name]
            if entry.versions:
                await self.unload(name)
            del self.entries[name]
            log.info("model '%s' left the repository", name)
        for name, catalog in found.items():
            entry = self.entries.setdefault(name, ModelEntry(name, catalog))
            if entry.catalog is not catalog:
                continue  # the name is served from another source; its fingerprints are not comparable
            if await loop.run_in_executor(self._loader, catalog.fingerprint, name) != entry.fingerprint:
                try:
                    await self.load(name)
                except ServerError:
                    pass  # logged by load; a failed reload keeps the old version serving

    async def poll_forever(self, interval_s: float, catalogs: list[Catalog] | None = None) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.poll(catalogs)

    async def close(self) -> None:
        old = [m for e in self.entries.values() for m in e.versions.values()]
        for entry in self.entries.values():
            entry.versions = {}
        await _close_all(old)  # one garbage collection for all of them (it takes long in a large heap)
        self._loader.shutdown(wait=False)


async def _close_all(models) -> None:
    models = list(models)
    await asyncio.gather(*(m.close() for m in models))
    if models:
        del models
        gc.collect()
        release_free_memory()



@dataclass
class _Built:
    config: mc.ModelConfig
    labels: dict[str, list[str]]
    instances: list
    batch_limit: int  # the largest batch the dynamic batcher forms
    processor: processors.Processor | None = None
    sequence: SequencePolicy | None = None  # with sequence_batching


def _from_model_folder(message: str, spec: ModelSpec) -> str:
    """A backend's message with the model's files named from the model's name, not by where the
    server keeps them (archives and uploads live in private temporary folders)."""
    folders = {spec.path, *(f for f in spec.versions.values() if not f.is_relative_to(spec.path))}
    for folder in sorted(folders, key=lambda f: len(str(f)), reverse=True):
        message = message.replace(str(folder), spec.name)
    return message


def _build(spec: ModelSpec, allow_custom_code: bool = False, models: Callable | None = None,
           calibration: BatchCalibration | None = None) -> dict[int, _Built]:
    """On a loader thread: complete the config, then create every instance of every version."""
    newest = spec.versions[max(spec.versions)]
    config = mc.ModelConfig()
    config.CopyFrom(spec.config)
    if warmup.PARAMETER in config.parameters:  # what a load measures, never what a config says
        del config.parameters[warmup.PARAMETER]
    if config.platform == processors.CUSTOM_PLATFORM:
        backend = processors.custom_backend(allow_custom_code, config.name)
        platform = config.platform
    else:
        platform = backends.platform_of(config, newest)
        backend = backends.get(platform)
    config.platform = config.platform or platform
    config.backend = config.backend or backend.BACKEND
    if not config.default_model_filename:
        config.default_model_filename = backend.DEFAULT_FILENAME
    # A backend may ask to complete configs that look complete (a Python model's auto_complete_config).
    always = getattr(backend, "completes", lambda config, model_file: False)(config, newest / config.default_model_filename)
    if not config.input or not config.output or always:
        backend.autocomplete(config, newest / config.default_model_filename)
        find_label_file(spec.path, config)  # labels.txt (or an archive's index_to_name.json) beside it
    _check_config(config)
    # A sequence_batching setting triserve does not implement fails the load here.
    sequence = SequencePolicy.from_config(config, spec.path) if config.HasField("sequence_batching") else None
    if config.version_policy.WhichOneof("policy_choice") is None:
        config.version_policy.latest.num_versions = 1
    complete_instance_groups(config)
    labels = read_labels(spec.path, config)
    built = {}
    try:
        for version, version_dir in spec.versions.items():
            processor_spec = spec.processors.get(version)
            processor = processors.build(processor_spec) if processor_spec is not None else None
            built[version] = _Built(config, labels, [], config.max_batch_size, processor, sequence)
            shared: dict[str, Any] = {}
            for settings in instance_settings(config):
                # BLS: the model may call others; `shared` is the same for every instance of the version
                settings = dataclasses.replace(settings, models=models, shared=shared)
                built[version].instances.append(backend.load(config, version_dir / config.default_model_filename, settings))
            run_warmup(config, spec.path, built[version].instances)
            # Python models are not measured: their execute may have effects, or call other models.
            if (config.WhichOneof("scheduling_choice") == "dynamic_batching" and not config.dynamic_batching.preferred_batch_size
                    and getattr(backend, "MEASURE_BATCHES", True)):
                model_file = version_dir / config.default_model_filename
                files = getattr(backend, "model_files", lambda path: [path])(model_file)  # OpenVINO: .xml and .bin
                cap, report = warmup.calibrate(config, built[version].instances, files, calibration)
                built[version].batch_limit = cap
                built[version].config = mc.ModelConfig()  # per version: each has its own files and cap
                built[version].config.CopyFrom(config)
                warmup.record(built[version].config, report)
    except BaseException:
        for b in built.values():  # nothing half-loaded stays behind
            for instance in b.instances:
                instance.close()
        raise
    return built


def _check_config(config: mc.ModelConfig) -> None:
    if not config.input:
        raise invalid(f"model '{config.name}' has no inputs in its configuration and none could be auto-completed")
    if not config.output:
        raise invalid(f"model '{config.name}' has no outputs in its configuration and none could be auto-completed")
    if config.max_batch_size < 0:
        raise invalid(f"model '{config.name}': max_batch_size must be >= 0")
    for tensor in [*config.input, *config.output]:
        if tensor.data_type == mc.TYPE_INVALID:
            raise invalid(f"model '{config.name}': tensor '{tensor.name}' has no valid data_type")
        if not tensor.dims and not tensor.HasField("reshape"):
            raise invalid(f"model '{config.name}': tensor '{tensor.name}' must have dims")


# What marks uploaded files as code: Python sources and compiled modules, shared libraries.
_CODE_SUFFIXES = (".py", ".pyc", ".pyd", ".so", ".pth")


def _refuse_code(name: str, config: mc.ModelConfig | None, files: dict[str, bytes], allowed: bool) -> None:
    """Uploaded models (the repository API's `file:` parameters) may not bring code to run unless the
    operator allowed it: Python models come from repositories on disk the operator points at."""
    if allowed:
        return
    code = sorted(k.removeprefix("file:") for k in files if k.lower().endswith(_CODE_SUFFIXES))
    python = config is not None and (config.backend == "python" or config.platform == "python")
    if code or python:
        what = f"file '{code[0]}' is code" if code else "its configuration names the Python backend"
        reason = (f"failed to load '{name}': the uploaded model brings code to run ({what}); this server runs"
                  " model code only from its model repositories, or from uploads when started with --allow-model-code")
        log.warning("refused upload of model '%s': %s", name, reason)
        raise ServerError(reason, Code.INVALID_ARG)


def _check_streams(built: dict[int, _Built]) -> None:
    """A decoupled model needs a backend that sends many responses per request (the Python backend)."""
    for b in built.values():
        if decoupled.is_decoupled(b.config) and not all(hasattr(i, "run_stream") for i in b.instances):
            for instance in (i for x in built.values() for i in x.instances):
                instance.close()
            raise invalid(f"unable to load model '{b.config.name}': decoupled transaction policy is supported only"
                          f" by the python backend, not by {b.config.backend or b.config.platform}")
