"""Model archives for the TorchServe tests, made by the real PyPI torch-model-archiver (a subprocess)
or by hand where an archive must be malicious."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ARCHIVER = Path(sys.executable).parent / "torch-model-archiver"


def torch_model_archiver(export_path: Path, name: str, version: str, handler: str, *, serialized: Path | None = None,
                         extra: list[Path] = (), fmt: str = "default", config_file: Path | None = None,
                         cwd: Path | None = None) -> Path:
    """Run the real torch-model-archiver; returns the archive (or folder) it wrote."""
    export_path.mkdir(parents=True, exist_ok=True)
    args = [str(ARCHIVER), "--model-name", name, "--version", version, "--handler", handler,
            "--export-path", str(export_path), "--archive-format", fmt, "-f"]
    if serialized is not None:
        args += ["--serialized-file", str(serialized)]
    if extra:
        args += ["--extra-files", ",".join(map(str, extra))]
    if config_file is not None:
        args += ["--config-file", str(config_file)]
    subprocess.run(args, check=True, capture_output=True, cwd=cwd)
    suffix = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}[fmt]
    return export_path / f"{name}{suffix}"


def index_to_name(path: Path) -> Path:
    """TorchServe's ImageNet index_to_name.json, {"0": ["n01440764", "tench"], ...}."""
    from triserve.examples.model_store import index_to_name as mapping

    path.write_text(json.dumps(mapping()))
    return path


def manifest(name: str, handler: str = "image_classifier", **model: str) -> bytes:
    return json.dumps({"createdOn": "01/01/2025 00:00:00", "runtime": "python",
                       "model": {"modelName": name, "handler": handler, "modelVersion": "1.0", **model},
                       "archiverVersion": "0.12.0"}, indent=2).encode()


def zip_archive(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] = {}) -> Path:
    """A .mar written entry by entry, names as given (zip-slip tests)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name, target in symlinks.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # S_IFLNK
            z.writestr(info, target)
    return path


def tar_archive(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] = {}) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in symlinks.items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            t.addfile(info)
    return path


def escape_to(target: Path) -> str:
    """An entry name that, joined to any folder, points at `target` (zip-slip)."""
    return "../" * 30 + str(target).lstrip(os.sep)


def marker_handler(path: Path, marker: Path, body: str) -> Path:
    """A custom handler file that leaves `marker` behind when it is imported."""
    path.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('executed')\n\n{body}")
    return path
