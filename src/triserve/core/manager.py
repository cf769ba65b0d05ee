"""The model manager: loads model versions from catalogs, tracks their state, swaps reloads in atomically."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as mc

from triserve import backends
from triserve.core import processors
from triserve.core.catalog import Catalog, Uploads
from triserve.core.instances import complete_instance_groups, instance_settings
from triserve.core.memory import release_free_memory
from triserve.core.model import Model, read_labels
from triserve.core.spec import ModelSpec
from triserve.core.status import LOADING, READY, UNAVAILABLE, UNLOADED, UNLOADING, IndexRow
from triserve.core.warmup import best_batch_size, run_warmup
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
    ) -> None:
        self.catalogs = catalogs
        self.control_mode = control_mode
        self.uploads = uploads  # where the repository API's `file:` contents are written
        self.allow_custom_code = allow_custom_code  # TorchServe archives' handler code may run
        self.entries: dict[str, ModelEntry] = {}
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
                    spec = await loop.run_in_executor(self._loader, self.uploads.write, name, config, files)
                else:
                    entry.fingerprint = await loop.run_in_executor(self._loader, entry.catalog.fingerprint, name)
                    spec = await loop.run_in_executor(self._loader, entry.catalog.read, name, config)
                entry.tried_versions = tuple(sorted(spec.versions))
                try:
                    built = await loop.run_in_executor(self._loader, _build, spec, self.allow_custom_code)
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
                    b.batch_limit, b.processor,
                )
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

    async def unload(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is None:
            raise not_found(f"failed to unload '{name}': model is not known")
        async with entry.lock:
            old = entry.versions
            entry.version_states = {v: (UNLOADING, "") for v in old}
            entry.versions = {}
            await _close_all(old.values())
            entry.state, entry.reason = UNAVAILABLE, UNLOADED
            entry.version_states = {v: (UNAVAILABLE, UNLOADED) for v in old}
            log.info("unloaded model '%s'", name)

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


def _from_model_folder(message: str, spec: ModelSpec) -> str:
    """A backend's message with the model's files named from the model's name, not by where the
    server keeps them (archives and uploads live in private temporary folders)."""
    folders = {spec.path, *(f for f in spec.versions.values() if not f.is_relative_to(spec.path))}
    for folder in sorted(folders, key=lambda f: len(str(f)), reverse=True):
        message = message.replace(str(folder), spec.name)
    return message


def _build(spec: ModelSpec, allow_custom_code: bool = False) -> dict[int, _Built]:
    """On a loader thread: complete the config, then create every instance of every version."""
    newest = spec.versions[max(spec.versions)]
    config = mc.ModelConfig()
    config.CopyFrom(spec.config)
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
    if not config.input or not config.output:
        backend.autocomplete(config, newest / config.default_model_filename)
    _check_config(config)
    if config.version_policy.WhichOneof("policy_choice") is None:
        config.version_policy.latest.num_versions = 1
    complete_instance_groups(config)
    labels = read_labels(spec.path, config)
    built = {}
    try:
        for version, version_dir in spec.versions.items():
            processor_spec = spec.processors.get(version)
            processor = processors.build(processor_spec) if processor_spec is not None else None
            built[version] = _Built(config, labels, [], config.max_batch_size, processor)
            for settings in instance_settings(config):
                built[version].instances.append(backend.load(config, version_dir / config.default_model_filename, settings))
            run_warmup(config, spec.path, built[version].instances)
            if config.WhichOneof("scheduling_choice") == "dynamic_batching" and not config.dynamic_batching.preferred_batch_size:
                built[version].batch_limit = best_batch_size(config, built[version].instances)
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
