"""The repository API's uploads: a model folder made of a load request's `file:<path>` contents."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path, PurePosixPath

from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.catalog import Uploads
from triserve.core.spec import ModelSpec
from triserve.errors import invalid, not_found
from triserve.repository.triton import read_model, version_folders


class UploadedModels(Uploads):
    """Folders under a private temporary directory, removed when the server goes."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="triserve-override-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, True)

    def write(self, name: str, config: mc.ModelConfig | None, files: dict[str, bytes]) -> ModelSpec:
        """On a loader thread: write the files, then read the folder as a Triton model."""
        if config is None:
            raise invalid(f"failed to load '{name}': a 'config' parameter must come with 'file:' parameters")
        folder = self.root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for key, content in files.items():
            relative = PurePosixPath(key.removeprefix("file:"))
            if relative.is_absolute() or ".." in relative.parts or not relative.parts:
                raise invalid(f"failed to load '{name}': file path '{relative}' must stay inside the model folder")
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        if not version_folders(folder):
            raise not_found(f"failed to load '{name}': the 'file:' parameters hold no numeric version folder")
        return read_model(name, folder, config)
