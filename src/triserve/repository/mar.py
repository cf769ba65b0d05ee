"""TorchServe model archives as a Catalog: `--model-store DIR --models NAME=FILE.mar ...|all`.

Each registered archive is one version of a model (TorchServe's "1.0" strings map to version
numbers 1, 2, ... in registration order). An archive is checked before anything is written
(sizes and compression ratios within --max-archive-size and --max-archive-ratio, manifest
fields are plain file names present in the archive, custom handler code needs
--allow-custom-handlers) and then extracted safely into a private temporary folder; the model
store is only ever read. The ModelConfig describes the serialized model so the core runs it
like any other model:

- `max_batch_size` = TorchServe's `batch_size`, dynamic batching with `max_batch_delay`, the
  queue bounded by `job_queue_size` (a full queue answers 503, as in TorchServe);
- `instance_group` count = workers;
- `image_classifier` on TorchScript: input `input__0` FP32 [3,224,224] NCHW (the outputs are
  found by the backend's test run); ONNX models describe themselves (auto-complete);
- custom handlers (and eager-mode `modelFile` archives) run on the `torchserve_handler` platform.

Settings priority, lowest first: config.properties `models`, the archive's model YAML
(`configFile`), then the management API's parameters.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.catalog import Registration, Registry, Settings
from triserve.core.processors import CUSTOM, CUSTOM_PLATFORM, NATIVE, NOT_SUPPORTED
from triserve.core.spec import ModelSpec, ProcessorSpec
from triserve.errors import Code, ServerError, StatusError, invalid, not_found
from triserve.options import DEFAULT_JOB_QUEUE_SIZE, ArchiveOptions
from triserve.repository.mar_extract import MANIFEST, Archive, Limits, iter_store
from triserve.repository.mar_fetch import download, in_store, is_remote

log = logging.getLogger("triserve")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")  # torch-model-archiver's rule
DEFAULT_VERSION = "1.0"
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript", ".ts")
# A file field of the manifest: torch-model-archiver stores basenames only.
_FILE_FIELDS = ("serializedFile", "modelFile", "requirementsFile", "configFile")


def conflict(message: str) -> ServerError:
    return ServerError(message, Code.ALREADY_EXISTS)


def _int(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise invalid(f"{what} must be an integer, got {value!r}") from None
    return number


def _apply(settings: Settings, values: dict[str, Any], source: str) -> None:
    """Apply TorchServe's camelCase per-model keys (config.properties `models`, model YAML)."""
    if values.get("batchSize") is not None:
        settings.batch_size = max(_int(values["batchSize"], f"batchSize in {source}"), 1)
    if values.get("maxBatchDelay") is not None:
        settings.max_batch_delay_ms = max(_int(values["maxBatchDelay"], f"maxBatchDelay in {source}"), 0)
    if values.get("minWorkers") is not None:
        settings.workers = max(_int(values["minWorkers"], f"minWorkers in {source}"), 0)


def check_manifest(archive: Archive, allow_custom_handlers: bool) -> None:
    """Every file the manifest names is a plain name present in the archive; custom code needs the flag."""
    model = archive.manifest["model"]
    where = archive.path.name
    for key in _FILE_FIELDS:
        value = model.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value or "/" in value or "\\" in value or value in (".", ".."):
            raise invalid(f"archive {where} refused: manifest {key} {value!r} must be a plain file name")
        if value not in archive.files:
            raise invalid(f"archive {where} refused: manifest {key} '{value}' is not in the archive")
    handler = model.get("handler")
    if not isinstance(handler, str) or not handler:
        raise invalid(f"archive {where} has no handler in its manifest")
    module = handler.split(":", 1)[0]
    if module in NOT_SUPPORTED:
        raise invalid(f"archive {where}: built-in handler '{module}' is not supported; supported: {', '.join(NATIVE)}")
    custom = module not in NATIVE
    if custom:
        filename = module if module.endswith(".py") else module + ".py"
        if "/" in filename or "\\" in filename or filename not in archive.files:
            raise invalid(f"archive {where} refused: handler file '{filename}' is not in the archive")
    if (custom or model.get("modelFile")) and not allow_custom_handlers:
        what = f"a custom handler '{handler}'" if custom else f"model code '{model['modelFile']}' (eager mode)"
        raise invalid(
            f"archive {where} contains {what}, which is Python code from the archive; triserve runs"
            " archive code only when the server is started with --allow-custom-handlers"
        )
    if model.get("requirementsFile"):
        log.warning("archive %s: %s is not installed (triserve never installs packages from archives)",
                    where, model["requirementsFile"])


def resolve_handler(handler: str, files: Any) -> str:
    """A handler as TorchServe's model loader resolves it: the module is the last path part
    before `:` (".py" dropped); a file of that name in the archive wins, else a built-in
    handler of that name (`serve/ts/torch_handler/image_classifier.py:handle` is
    `image_classifier`). Anything else stays as given (its start fails)."""
    module, sep, function = handler.partition(":")
    module = module.replace("\\", "/").rsplit("/", 1)[-1]
    if module.endswith(".py"):
        module = module[:-3]
    if f"{module}.py" in files:
        return f"{module}.py{sep}{function}"
    if module in NATIVE or module in NOT_SUPPORTED:
        return module
    return handler


def needs_code(manifest: dict) -> bool:
    model = manifest.get("model", {})
    return model.get("handler", "").split(":", 1)[0] not in NATIVE or bool(model.get("modelFile"))


class MarCatalog(Registry):
    def __init__(self, store: Path | None, options: ArchiveOptions | None = None) -> None:
        self.store = store
        self.options = options or ArchiveOptions()
        self.limits = Limits(self.options.max_archive_size, self.options.max_archive_ratio)
        self._models: dict[str, dict[int, Registration]] = {}
        self._default: dict[str, int] = {}
        self._root = Path(tempfile.mkdtemp(prefix="triserve-mar-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._root, True)
        if store is not None and not store.is_dir():
            raise invalid(f"model store '{store}' is not a directory")

    # -- Catalog ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Models to run: a model scaled to 0 workers stays registered but is not loaded."""
        return sorted(n for n in self._models if self.workers(n) != 0)

    def read(self, name: str, config: mc.ModelConfig | None = None) -> ModelSpec:
        """On a loader thread: extract what is not yet extracted, then describe the model."""
        versions = self._models.get(name)
        if not versions:
            raise not_found(f"Model not found: {name}")
        for registration in versions.values():
            self._extract(registration)
        default = versions[self._default[name]]
        if config is None:
            config = self.config(default)
            if config.instance_group and config.instance_group[0].count == 0:
                raise invalid(f"model '{name}' has 0 workers; scale it up to start it")
        folders = {}
        processors = {}
        for number, registration in versions.items():
            assert registration.folder is not None
            self._link_model_file(registration, config.default_model_filename)
            folders[number] = registration.folder
            processors[number] = _processor(registration)
        return ModelSpec(name, default.folder, config, folders, source=f"archive {default.url}", processors=processors)

    # -- what the TorchServe front ends ask -----------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._models

    def registered(self) -> list[str]:
        """Every registered model, also those scaled to 0 workers."""
        return sorted(self._models)

    def registrations(self, name: str) -> dict[int, Registration]:
        versions = self._models.get(name)
        if not versions:
            raise not_found(f"Model not found: {name}")
        return versions

    def default_version(self, name: str) -> int | None:
        return self._default.get(name)

    def aliases(self, name: str) -> dict[str, int]:
        """TorchServe's version strings ("1.0") -> version numbers."""
        return {r.version: number for number, r in self._models.get(name, {}).items()}

    def resolve(self, name: str, version: str | None) -> int:
        """TorchServe version string (None: the default) -> version number."""
        versions = self.registrations(name)
        if not version:
            return self._default[name]
        for number, registration in versions.items():
            if registration.version == version:
                return number
        raise StatusError(f"Model version: {version} does not exist for model: {name}", 404,
                          "ModelVersionNotFoundException")

    def set_default(self, name: str, version: str) -> None:
        self._default[name] = self.resolve(name, version)

    def workers(self, name: str) -> int | None:
        """The registered worker count of a model (None: the core's default)."""
        return self._models[name][self._default[name]].settings.workers

    def set_workers(self, name: str, workers: int) -> None:
        for registration in self.registrations(name).values():
            registration.settings.workers = workers

    # -- registration ---------------------------------------------------------------------------
    def add_startup(self, spec: str) -> None:
        """One `--models` / `load_models` entry: `all`, `NAME=FILE` or `FILE` (in the store or a path)."""
        if spec == "all":
            if self.store is None:
                raise invalid("--models all needs --model-store")
            for path in iter_store(self.store):
                self._add_startup(None, path, path.name)
            return
        name, sep, url = spec.partition("=")
        if not sep:
            name, url = "", spec
        if is_remote(url):
            raise invalid(f"--models {spec}: remote archives are not loaded at startup; download the archive to the model store")
        path = Path(url)
        if self.store is not None and (self.store / url).exists():
            path = self.store / url
        self._add_startup(name or None, path, url)

    def _add_startup(self, name: str | None, path: Path, url: str) -> None:
        registration = Registration(name or "", DEFAULT_VERSION, url, path, Settings(), loaded_at_startup=True)
        try:
            with Archive(path, self.limits) as archive:
                registration.manifest = archive.manifest
                self._settle(registration, archive, name, {})
        except ServerError as e:
            registration.error = e.message
            registration.name = registration.name or _stem(path)
            log.error("model archive %s: %s", url, e.message)
        if registration.name in self._models:
            if any(r.version == registration.version for r in self._models[registration.name].values()):
                log.error("model '%s' version %s is given twice; ignoring %s", registration.name, registration.version, url)
                return
        self._add(registration)

    def prepare(self, url: str, model_name: str | None, params: dict[str, Any]) -> Registration:
        """Management registration, on a worker thread: fetch, check, extract. Nothing is added yet."""
        folder = Path(tempfile.mkdtemp(dir=self._root))
        try:
            if is_remote(url):
                downloads = folder / "download"
                downloads.mkdir()
                path = download(url, self.options.allowed_url_hosts, downloads, self.limits.max_bytes)
            else:
                path = in_store(self.store, url)
            registration = Registration("", DEFAULT_VERSION, url, path, Settings())
            with Archive(path, self.limits) as archive:
                registration.manifest = archive.manifest
                self._settle(registration, archive, model_name, params, registered=True)
                self._check_new(registration)
                target = folder / "model"
                archive.extract(target)
            registration.folder = target
            if is_remote(url):
                shutil.rmtree(folder / "download", ignore_errors=True)
                registration.source = None
            return registration
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def add(self, registration: Registration) -> int:
        """Add a prepared registration (on the event loop); returns its version number."""
        self._check_new(registration)
        return self._add(registration)

    def remove(self, name: str, version: str | None = None) -> list[Registration]:
        """Unregister one version (None: all); removing the default while others exist is refused."""
        versions = self.registrations(name)
        if version is None:
            removed = list(versions.values())
            del self._models[name]
            del self._default[name]
        else:
            number = self.resolve(name, version)
            if number == self._default[name] and len(versions) > 1:
                raise StatusError(f"Cannot remove default version for model {name}", 403,
                                  "InvalidModelVersionException")
            removed = [versions.pop(number)]
            if not versions:
                del self._models[name]
                del self._default[name]
        return removed

    def discard(self, registrations: list[Registration]) -> None:
        """Delete the extracted files of unregistered versions (after the models are unloaded)."""
        for registration in registrations:
            if registration.folder is not None:
                shutil.rmtree(registration.folder.parent, ignore_errors=True)

    # -- internals ------------------------------------------------------------------------------
    def _add(self, registration: Registration) -> int:
        versions = self._models.setdefault(registration.name, {})
        number = max(versions, default=0) + 1
        versions[number] = registration
        self._default.setdefault(registration.name, number)
        return number

    def _check_new(self, registration: Registration) -> None:
        for existing in self._models.get(registration.name, {}).values():
            if existing.version == registration.version:
                raise conflict(
                    f"Model version {registration.version} is already registered for model {registration.name}"
                )

    def _settle(self, registration: Registration, archive: Archive, name: str | None, params: dict[str, Any],
                registered: bool = False) -> None:
        """Name, version and settings from the manifest, config.properties, model YAML and `params`.

        A `handler` parameter replaces the manifest's handler, as TorchServe's `model.setHandler`;
        as in TorchServe a handler that does not resolve is found when workers start (the
        registration stands, its start fails), not at registration."""
        handler = params.get("handler")
        if handler:
            check_manifest(archive, self.options.allow_custom_handlers)
            archive.manifest["model"]["handler"] = resolve_handler(str(handler), archive.files)
            try:
                check_manifest(archive, self.options.allow_custom_handlers)
            except ServerError as e:
                registration.error = e.message
        else:
            check_manifest(archive, self.options.allow_custom_handlers)
        model = archive.manifest["model"]
        name = name or model.get("modelName") or ""
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise invalid(f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
        registration.name = name
        registration.version = str(model.get("modelVersion") or DEFAULT_VERSION)
        settings = Settings(workers=self.options.default_workers)
        if registered and settings.workers is None:
            settings.workers = 0  # the register API's default: TorchServe's default_workers_per_model, 0
        per_model = self.options.models_config.get(name, {})
        if isinstance(per_model, dict):
            values = per_model.get(registration.version)
            _apply(settings, values if isinstance(values, dict) else {}, "config.properties models")
        config_file = model.get("configFile")
        if config_file:
            try:
                values = yaml.safe_load(archive.read(config_file, 1024**2)) or {}
            except yaml.YAMLError as e:
                raise invalid(f"archive {archive.path.name}: {config_file} is not valid YAML: {e}") from None
            if not isinstance(values, dict):
                raise invalid(f"archive {archive.path.name}: {config_file} must be a YAML mapping")
            _apply(settings, values, config_file)
        if params.get("batch_size") is not None:
            settings.batch_size = max(_int(params["batch_size"], "batch_size"), 1)
        if params.get("max_batch_delay") is not None:
            settings.max_batch_delay_ms = max(_int(params["max_batch_delay"], "max_batch_delay"), 0)
        if params.get("initial_workers") is not None:
            settings.workers = max(_int(params["initial_workers"], "initial_workers"), 0)
        for key in ("response_timeout", "startup_timeout"):
            if params.get(key) is not None:
                setattr(settings, f"{key}_s", _int(params[key], key))
        registration.settings = settings

    def _extract(self, registration: Registration) -> None:
        if registration.error:
            raise invalid(registration.error)
        if registration.folder is not None:
            return
        assert registration.source is not None
        folder = Path(tempfile.mkdtemp(dir=self._root))
        try:
            with Archive(registration.source, self.limits) as archive:
                check_manifest(archive, self.options.allow_custom_handlers)
                registration.manifest = archive.manifest
                archive.extract(folder / "model")
            registration.folder = folder / "model"
        except BaseException:
            registration.folder = None
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def config(self, registration: Registration) -> mc.ModelConfig:
        """The ModelConfig of a registered archive, from its manifest and settings."""
        model = registration.model
        settings = registration.settings
        config = mc.ModelConfig(name=registration.name)
        config.max_batch_size = max(settings.batch_size, 1)
        config.dynamic_batching.max_queue_delay_microseconds = settings.max_batch_delay_ms * 1000
        config.dynamic_batching.default_queue_policy.max_queue_size = self.options.job_queue_size
        config.version_policy.all.SetInParent()
        if settings.workers is not None:
            config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=settings.workers)
        if needs_code(registration.manifest):
            config.platform = CUSTOM_PLATFORM
            config.default_model_filename = MANIFEST
            return config
        serialized = model.get("serializedFile")
        if not serialized:
            raise invalid(f"archive of model '{registration.name}' has no serializedFile")
        suffix = Path(serialized).suffix.lower()
        if suffix in TORCHSCRIPT_SUFFIXES:
            config.platform = "pytorch_libtorch"
        elif suffix == ".onnx":
            config.platform = "onnxruntime_onnx"
        else:
            raise invalid(
                f"archive of model '{registration.name}': serialized file '{serialized}' is neither"
                " TorchScript (.pt) nor ONNX (.onnx)"
            )
        config.default_model_filename = serialized
        # Which built-in handler prepares the model's input (`triserve classify` preprocesses as it does).
        config.parameters["torchserve_handler"].string_value = model["handler"].split(":", 1)[0]
        handler = model["handler"].split(":", 1)[0]
        if config.platform == "pytorch_libtorch":
            # TorchScript records no shapes: the inputs are what the handler makes; the backend
            # finds the outputs of fixed-size inputs with a test run, the others are listed.
            if handler in ("image_classifier", "image_segmenter"):
                config.input.add(name="input__0", data_type=mc.TYPE_FP32, format=mc.ModelInput.FORMAT_NCHW,
                                 dims=[3, 224, 224])
            elif handler == "object_detector":  # one image of its own size per request
                config.max_batch_size = 0
                config.ClearField("dynamic_batching")
                config.input.add(name="input__0", data_type=mc.TYPE_FP32, format=mc.ModelInput.FORMAT_NCHW,
                                 dims=[3, -1, -1])
                config.output.add(name="boxes__0", data_type=mc.TYPE_FP32, dims=[-1, 4])
                config.output.add(name="labels__1", data_type=mc.TYPE_INT64, dims=[-1])
                config.output.add(name="scores__2", data_type=mc.TYPE_FP32, dims=[-1])
            elif handler == "text_classifier":  # TorchServe's handler takes one text per request
                config.max_batch_size = 0
                config.ClearField("dynamic_batching")
                config.input.add(name="text__0", data_type=mc.TYPE_INT64, dims=[-1])
                config.input.add(name="offsets__1", data_type=mc.TYPE_INT64, dims=[1])
                config.output.add(name="output__0", data_type=mc.TYPE_FP32, dims=[1, -1])
        return config

    def _link_model_file(self, registration: Registration, filename: str) -> None:
        """Versions whose serialized file has another name get a link under the model's file name."""
        assert registration.folder is not None
        target = registration.folder / filename
        if target.exists() or filename == MANIFEST:
            return
        source = registration.model.get("serializedFile")
        if source and (registration.folder / source).is_file():
            try:
                os.link(registration.folder / source, target)
            except OSError:
                shutil.copyfile(registration.folder / source, target)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".mar", ".model"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _processor(registration: Registration) -> ProcessorSpec:
    assert registration.folder is not None
    handler = CUSTOM if needs_code(registration.manifest) else registration.model["handler"].split(":", 1)[0]
    return ProcessorSpec(handler, registration.folder)


def from_options(options: ArchiveOptions) -> MarCatalog | None:
    """The archive catalog `triserve serve` options ask for (--model-store, --models), if any."""
    if not options.enabled:
        return None
    catalog = MarCatalog(options.model_store, options)
    for spec in options.models:
        catalog.add_startup(spec)
    return catalog
