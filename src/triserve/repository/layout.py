"""What a `--model-repository` folder holds, told from its files, and how to serve it without
writing under it (KServe mounts models read-only at /mnt/models; one runtime's args must serve
whatever `storageUri` delivered there).

Layouts, checked in this order:
- `torchserve`: `model-store/` and `config/config.properties` (what KServe's TorchServe runtime
  expects): served as `--model-store DIR/model-store --ts-config DIR/config/config.properties`.
- `tfserving`: numeric version folders holding `saved_model.pb` (a TF Serving base path): served
  as `--model-base-path DIR` with `--model-name`.
- `bare`: one model file (`model.onnx`, `*.pt`, a `.mar`), a SavedModel folder, a single Triton
  model folder (`config.pbtxt` beside version folders), or a folder holding exactly one model file:
  served as one model named `--model-name`. Files and folders are linked (never copied, never
  written) from a Triton repository made under $TMPDIR.
- `triton`: anything else, a Triton model repository as it is.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triserve.errors import invalid

MODEL_FILES = {".onnx": "model.onnx", ".pt": "model.pt", ".pth": "model.pt", ".torchscript": "model.pt"}
ARCHIVE = ".mar"


@dataclass(frozen=True)
class Layout:
    kind: str  # triton, torchserve, tfserving or bare
    path: Path
    model: Path | None = None  # bare: the model file or folder


def _saved_model(folder: Path) -> bool:
    return (folder / "saved_model.pb").is_file() or (folder / "saved_model.pbtxt").is_file()


def _model_file(path: Path) -> bool:
    return path.is_file() and (path.suffix.lower() in MODEL_FILES or path.suffix.lower() == ARCHIVE)


def _triton_model(folder: Path) -> bool:
    """One Triton model's folder: version folders, with a config.pbtxt or a model file in them."""
    versions = [c for c in folder.iterdir() if c.is_dir() and c.name.isdigit()]
    return bool(versions) and ((folder / "config.pbtxt").is_file()
                               or any(_model_file(f) or f.name.endswith(".savedmodel") for v in versions for f in v.iterdir()))


def detect(path: Path) -> Layout:
    """The layout of `path` (a folder or a file); a path that does not exist is a Triton
    repository (the repository code reports it)."""
    if path.is_file():
        if not _model_file(path):
            raise invalid(f"--model-repository {path}: a file that is not a model (.onnx, .pt, .mar)")
        return Layout("bare", path, path)
    if not path.is_dir():
        return Layout("triton", path)
    if (path / "model-store").is_dir() and (path / "config" / "config.properties").is_file():
        return Layout("torchserve", path)
    children = sorted(path.iterdir())
    if any(c.is_dir() and c.name.isdigit() and _saved_model(c) for c in children):
        return Layout("tfserving", path)
    if _saved_model(path) or _triton_model(path):
        return Layout("bare", path, path)
    models = [c for c in children if _model_file(c)]
    folders = [c for c in children if c.is_dir() and not c.name.startswith(".")]
    if len(models) == 1 and not folders:
        return Layout("bare", path, models[0])
    return Layout("triton", path)


def _staged(name: str, model: Path) -> Path:
    """A Triton repository under $TMPDIR whose one model `name` links to `model`."""
    root = Path(tempfile.mkdtemp(prefix="triserve-layout-"))
    atexit.register(shutil.rmtree, root, True)
    target = root / name
    if model.is_dir() and _triton_model(model):
        target.symlink_to(model.resolve(), target_is_directory=True)
    elif model.is_dir():  # a SavedModel folder
        (target / "1").mkdir(parents=True)
        (target / "1" / "model.savedmodel").symlink_to(model.resolve(), target_is_directory=True)
    else:
        (target / "1").mkdir(parents=True)
        (target / "1" / MODEL_FILES[model.suffix.lower()]).symlink_to(model.resolve())
    return root


def apply(values: dict[str, Any]) -> None:
    """Rewrite `triserve serve`'s parsed values (before --ts-config is read) so that each
    --model-repository is served by the catalog its layout needs."""
    repositories: list[str] = []
    for entry in values.get("model_repository") or []:
        layout = detect(Path(entry))
        if layout.kind == "triton":
            repositories.append(entry)
        elif layout.kind == "torchserve":
            if values.get("model_store"):
                raise invalid(f"--model-repository {entry} holds a TorchServe model-store/; --model-store names another")
            values["model_store"] = str(layout.path / "model-store")
            if not values.get("ts_config"):
                values["ts_config"] = str(layout.path / "config" / "config.properties")
            values["models_default_all"] = True  # every archive, unless config.properties names them
        elif layout.kind == "tfserving":
            if values.get("model_base_path") or values.get("model_config_file"):
                raise invalid(f"--model-repository {entry} is a TF Serving base path; another TF Serving source is given")
            values["model_base_path"] = str(layout.path)
        else:
            name = values.get("model_name")
            if not name:
                raise invalid(f"--model-repository {entry} holds a single model: name it with --model-name")
            assert layout.model is not None
            if layout.model.suffix.lower() == ARCHIVE:
                values["models"] = [*(values.get("models") or []), f"{name}={layout.model.resolve()}"]
            else:
                repositories.append(str(_staged(name, layout.model)))
    values["model_repository"] = repositories
