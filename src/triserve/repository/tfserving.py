"""TF Serving model sources: a models.conf (`ModelServerConfig` in text format) or one
`--model-name` / `--model-base-path`. Each model is `base_path/<version>/` with the SavedModel
directly inside the numeric version folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.catalog import Catalog
from triserve.core.spec import ModelSpec
from triserve.errors import ServerError, invalid, not_found, unavailable
from triserve.protos import tfserving_config_pb2 as tfs
from triserve.repository.triton import folder_fingerprint, select_versions

log = logging.getLogger("triserve")

PLATFORM = "tensorflow_savedmodel"
DEFAULT_MODEL_NAME = "default"  # TF Serving's --model_name default


def parse_config(text: str, source: str) -> tfs.ModelServerConfig:
    """A models.conf, parsed with protobuf; a syntax error or unknown field names the file."""
    config = tfs.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise invalid(f"failed to parse {source}: {e}") from None
    return config


def version_folders(base_path: Path) -> dict[int, Path]:
    """Numeric subfolders, as TF Serving reads them: `00000123` is 123, other names are ignored."""
    found: dict[int, Path] = {}
    for entry in sorted(base_path.iterdir()):
        if entry.is_dir() and entry.name.isdigit():
            found.setdefault(int(entry.name), entry)
    return found


def triton_policy(policy: tfs.FileSystemStoragePathSourceConfig.ServableVersionPolicy) -> mc.ModelVersionPolicy:
    """TF Serving's version policy has the same three choices as Triton's; the default is latest 1."""
    result = mc.ModelVersionPolicy()
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        result.all.SetInParent()
    elif kind == "specific":
        result.specific.versions.extend(policy.specific.versions)
    else:
        result.latest.num_versions = max(policy.latest.num_versions, 1) if kind == "latest" else 1
    return result


class TFServingModels(Catalog):
    """The models of a models.conf (re-read every `config_poll_seconds` when > 0) or of one base path.

    Version folders are listed again on every read; the server polls this catalog every
    `poll_seconds` (ModelManager.poll), reloading a model when its fingerprint changes.
    """

    def __init__(
        self,
        config_file: Path | None = None,
        model_name: str = DEFAULT_MODEL_NAME,
        base_path: Path | None = None,
        fs_poll_seconds: float = 1.0,
        config_poll_seconds: float = 0.0,
    ) -> None:
        if (config_file is None) == (base_path is None):
            raise invalid("give one of a model config file and a model base path")
        self.config_file = config_file
        self.config_poll_seconds = config_poll_seconds if config_file is not None else 0.0
        self.poll_seconds = min((s for s in (fs_poll_seconds, self.config_poll_seconds) if s > 0), default=0.0)
        self.models: dict[str, tfs.ModelConfig] = {}
        self._root = Path.cwd()  # relative base paths resolve against this
        self._read_at = 0.0
        if config_file is not None:
            self._root = config_file.resolve().parent
            self._read_config_file()
        else:
            single = tfs.ModelConfig(name=model_name, base_path=str(base_path), model_platform="tensorflow")
            self.replace(tfs.ModelServerConfig(model_config_list=tfs.ModelConfigList(config=[single])))

    # -- the config -----------------------------------------------------------------------
    def _read_config_file(self) -> None:
        assert self.config_file is not None
        try:
            text = self.config_file.read_text()
        except OSError as e:
            raise invalid(f"failed to read model config file {self.config_file}: {e.strerror or e}") from None
        config = parse_config(text, str(self.config_file))
        try:
            self.replace(config)
        except ServerError as e:
            raise invalid(f"{self.config_file}: {e.message}") from None
        self._read_at = time.monotonic()

    def replace(self, config: tfs.ModelServerConfig) -> None:
        """Take a new config whole (TF Serving's reload semantics: models it leaves out go away)."""
        kind = config.WhichOneof("config")
        if kind == "custom_model_config":
            raise invalid("custom_model_config is not supported; use model_config_list")
        models: dict[str, tfs.ModelConfig] = {}
        for model in config.model_config_list.config:
            if not model.name:
                raise invalid("every model in the model config list needs a name")
            if model.name in models:
                raise invalid(f"Illegal to list model {model.name} multiple times in config list")
            if not model.base_path:
                raise invalid(f"model '{model.name}' has no base_path")
            platform = model.model_platform or "tensorflow"
            if platform != "tensorflow" or model.model_type == tfs.OTHER:
                raise invalid(
                    f"model '{model.name}': model_platform '{platform}' is not supported; only 'tensorflow'"
                )
            models[model.name] = model
        self.models = models
        self._read_at = time.monotonic()  # a reload request's config holds until the next file poll is due

    def refresh(self) -> None:
        """Re-read the config file when its poll interval has passed; a broken file keeps the old config."""
        if not self.config_poll_seconds or time.monotonic() - self._read_at < self.config_poll_seconds:
            return
        try:
            self._read_config_file()
        except Exception as e:
            self._read_at = time.monotonic()
            log.error("keeping the previous model config: %s", getattr(e, "message", e))

    def base_path(self, name: str) -> Path:
        path = Path(self._model(name).base_path).expanduser()
        return path if path.is_absolute() else self._root / path

    def aliases(self, name: str) -> dict[str, int]:
        """The model's version labels ("stable" -> 2); none for a model not in the config."""
        model = self.models.get(name)
        return dict(model.version_labels) if model is not None else {}

    def _model(self, name: str) -> tfs.ModelConfig:
        model = self.models.get(name)
        if model is None:
            raise not_found(f"model '{name}' is not in the model config")
        return model

    # -- the Catalog interface ----------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.models)

    def read(self, name: str, config: mc.ModelConfig | None = None) -> ModelSpec:
        """The versions the policy selects now; `config` (the v2 load API's override) may add to
        the Triton config, but the platform and version folders stay TF Serving's."""
        model = self._model(name)
        base = self.base_path(name)
        if not base.is_dir():
            raise unavailable(f"base_path {base} of model '{name}' is not a directory")
        spec_config = mc.ModelConfig()
        if config is not None:
            spec_config.CopyFrom(config)
        if spec_config.name and spec_config.name != name:
            raise invalid(f"model name '{spec_config.name}' in the config override does not match '{name}'")
        spec_config.name = name
        spec_config.platform = PLATFORM
        spec_config.default_model_filename = "."  # the version folder is the SavedModel itself
        spec_config.version_policy.CopyFrom(triton_policy(model.model_version_policy))
        try:
            available = version_folders(base)
        except OSError as e:  # removed while we looked
            raise unavailable(f"failed to list base_path {base} of model '{name}': {e}") from None
        selected = select_versions(spec_config, sorted(available))
        if not selected:
            raise unavailable(
                f"no version of model '{name}' is selected by its version policy"
                f" (found versions {sorted(available) or 'none'} in {base})"
            )
        return ModelSpec(
            name=name,
            path=base,
            config=spec_config,
            versions={v: available[v] for v in selected},
            source=str(self.config_file) if self.config_file else f"--model-base-path {base}",
        )

    def fingerprint(self, name: str) -> object:
        """What a load would see: the config and every selected version folder's files (so a
        version folder still being copied is loaded again once it is complete)."""
        try:
            spec = self.read(name)
            return spec.config.SerializeToString(), tuple((v, folder_fingerprint(p)) for v, p in sorted(spec.versions.items()))
        except ServerError as e:
            return e.message
        except OSError as e:  # a folder removed while we looked; the next poll sees the result
            return str(e)
