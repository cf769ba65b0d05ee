"""The repository API's uploads: a model folder made of a load request's `file:<path>` contents."""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path, PurePosixPath

from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.catalog import Uploads
from triserve.core.spec import ModelSpec
from triserve.errors import ServerError, invalid, not_found
from triserve.repository.mar_extract import path_problem, reason, shown
from triserve.repository.triton import read_model, version_folders

log = logging.getLogger("triserve")


class UploadedModels(Uploads):
    """Folders under a private temporary directory, removed when the server goes."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="triserve-override-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, True)

    def write(self, name: str, config: mc.ModelConfig | None, files: dict[str, bytes]) -> ModelSpec:
        """On a loader thread: write the files, then read the folder as a Triton model."""
        if config is None:
            raise invalid(f"failed to load '{name}': a 'config' parameter must come with 'file:' parameters")
        # The name and every path are checked before anything is written (or removed).
        problem = path_problem(name)
        if problem is not None or name in ("", ".", "..") or "/" in name:
            raise invalid(f"failed to load {shown(name)}, failed to poll from model repository: the model name"
                          f" {problem or 'is not a folder name'};"
                          " uploaded files are written to a folder of that name")
        paths = {}
        for key, content in files.items():
            path = key.removeprefix("file:")
            problem = path_problem(path)
            if problem is not None or not PurePosixPath(path).parts:
                raise invalid(f"failed to load '{name}', failed to poll from model repository: file path"
                              f" {shown(path)} {problem or 'is empty'}:"
                              " a file path must stay inside the model folder")
            paths[PurePosixPath(path)] = content
        folder = self.root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for relative, content in paths.items():
            target = folder / relative
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            except OSError as e:  # a file where a folder must be, a full disk: the reason, not the temp path
                log.warning("upload of model '%s': writing %s failed: %r", name, target, e)
                raise invalid(
                    f"failed to load '{name}': file {shown(str(relative))} could not be written: {reason(e)}"
                ) from None
        if not version_folders(folder):
            raise not_found(f"failed to load '{name}', failed to poll from model repository: the 'file:' parameters"
                            " hold no numeric version folder")
        try:
            return read_model(name, folder, config)
        except ServerError as e:  # its messages name the folder: the uploaded files, not the temp path
            e.message = e.message.replace(str(folder), "the uploaded files")
            e.args = (e.message,)
            raise
