"""Triton model repositories: `<repo>/<model>/{config.pbtxt, labels, <version>/<model file>}`."""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.catalog import Catalog
from triserve.core.spec import ModelSpec
from triserve.errors import invalid, unavailable
from triserve.repository.config import parse_pbtxt


class TritonRepositories(Catalog):
    """One or more Triton model repositories, merged (a name found twice is an error)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)

    def names(self) -> list[str]:
        return list(find_models(self.paths))

    def read(self, name: str, config: mc.ModelConfig | None = None) -> ModelSpec:
        return read_model(name, find_models(self.paths)[name], config)

    def fingerprint(self, name: str) -> object:
        """Changes whenever a file of the model is added, removed or rewritten (poll mode)."""
        folder = find_models(self.paths).get(name)
        return folder_fingerprint(folder) if folder else None


def find_models(repositories: list[Path]) -> dict[str, Path]:
    """Every model folder in the repositories; a name found twice is an error, as in Triton."""
    models: dict[str, Path] = {}
    for repo in repositories:
        if not repo.is_dir():
            raise invalid(f"model repository '{repo}' is not a directory")
        for entry in sorted(repo.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if entry.name in models:
                raise invalid(
                    f"model '{entry.name}' appears in two repositories: {models[entry.name]} and {entry}"
                )
            models[entry.name] = entry
    return models


def read_model(name: str, model_dir: Path, config: mc.ModelConfig | None = None) -> ModelSpec:
    """Read a model folder; `config` replaces config.pbtxt (the load API's override)."""
    source = "config override"
    if config is None:
        config_path = model_dir / "config.pbtxt"
        if config_path.exists():
            config = parse_pbtxt(config_path)
            source = str(config_path)
        else:
            config = mc.ModelConfig()
            source = f"{model_dir} (no config.pbtxt, auto-completed)"
    if config.name and config.name != name:
        raise invalid(
            f"model name '{config.name}' in {source} does not match its directory name '{name}'"
        )
    config.name = name
    available = version_folders(model_dir)
    selected = select_versions(config, sorted(available))
    if not selected:
        raise unavailable(
            f"at least one version must be available under the version policy of model '{name}'"
            f" (found versions {sorted(available) or 'none'} in {model_dir})"
        )
    return ModelSpec(
        name=name,
        path=model_dir,
        config=config,
        versions={v: available[v] for v in selected},
        source=source,
    )


def version_folders(model_dir: Path) -> dict[int, Path]:
    """Numeric subfolders; Triton ignores other names and ones with a leading zero."""
    found = {}
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit() and (entry.name == "0" or not entry.name.startswith("0")):
            found[int(entry.name)] = entry
    return found


def select_versions(config: mc.ModelConfig, available: list[int]) -> list[int]:
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return available
    if kind == "specific":
        return [v for v in available if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if kind == "latest" else 1
    return available[-max(count, 1):] if available else []


def folder_fingerprint(folder: Path) -> tuple:
    entries = []
    for path in sorted(folder.rglob("*")):
        try:
            stat = path.stat()
        except OSError:  # removed while we looked
            continue
        entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)
