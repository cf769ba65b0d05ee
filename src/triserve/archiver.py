"""`triserve archive`: torch-model-archiver's command, writing the same archives.

Same flags, same layout (artifacts flat at the root, `MAR-INF/MANIFEST.json` with the same
fields), same formats: `default` (.mar zip, deflated), `zip-store`, `tgz` (<name>.tar.gz with a
top-level <name>/ folder) and `no-archive` (a folder). Built-in handler names are not copied;
a handler file is (`x.py` or `x:fn` -> x.py). Extra files may be globs or folders (flattened).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import tarfile
import zipfile
from datetime import datetime
from pathlib import Path

from triserve.core.processors import NATIVE, NOT_SUPPORTED
from triserve.repository.mar import NAME_PATTERN

ARCHIVER_VERSION = "0.12.0"  # the torch-model-archiver whose manifest this reproduces
BUILTIN_HANDLERS = (*NATIVE, *NOT_SUPPORTED)
_SUFFIX = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
_SKIPPED_DIRS = {"__MACOSX", "__pycache__"}


class ArchiveError(Exception):
    pass


def manifest(model_name: str, version: str, handler: str, serialized_file: str | None = None,
             model_file: str | None = None, requirements_file: str | None = None,
             config_file: str | None = None, runtime: str = "python") -> dict:
    model: dict[str, str] = {"modelName": model_name}
    if serialized_file:
        model["serializedFile"] = os.path.basename(serialized_file)
    model["handler"] = os.path.basename(handler)
    if model_file:
        model["modelFile"] = os.path.basename(model_file)
    if version:
        model["modelVersion"] = version
    if requirements_file:
        model["requirementsFile"] = os.path.basename(requirements_file)
    if config_file:
        model["configFile"] = os.path.basename(config_file)
    return {
        "createdOn": datetime.now().strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": runtime,
        "model": model,
        "archiverVersion": ARCHIVER_VERSION,
    }


def _handler_path(handler: str) -> Path | None:
    if handler in BUILTIN_HANDLERS:
        return None
    module = handler.split(":", 1)[0]
    return Path(module if module.endswith(".py") else module + ".py")


def _extra_files(spec: str) -> dict[str, Path]:
    """Archive name -> source file; folders contribute their content, flattened one level."""
    files: dict[str, Path] = {}
    for pattern in spec.split(","):
        pattern = pattern.strip()
        if not pattern:
            continue
        wildcard = any(c in pattern for c in "*?[")
        if not wildcard and not Path(pattern).exists():
            raise ArchiveError(f"File does not exist: {pattern}")
        for match in sorted(glob.glob(pattern)):
            path = Path(match)
            if path.is_file():
                files[path.name] = path
            elif path.is_dir():
                for sub in sorted(path.rglob("*")):
                    if sub.is_file() and not (_SKIPPED_DIRS & set(sub.relative_to(path).parts[:-1])):
                        files[sub.relative_to(path).as_posix()] = sub
    return files


def write_archive(
    model_name: str,
    version: str,
    handler: str,
    export_path: Path,
    serialized_file: str | None = None,
    model_file: str | None = None,
    extra_files: str | None = None,
    requirements_file: str | None = None,
    config_file: str | None = None,
    runtime: str = "python",
    archive_format: str = "default",
    force: bool = False,
) -> Path:
    """Write the archive; returns its path."""
    if not NAME_PATTERN.match(model_name):
        raise ArchiveError(
            f"Model name contains special characters.\nThe allowed regular expression filter for model name is:"
            f" {NAME_PATTERN.pattern}"
        )
    if archive_format not in _SUFFIX:
        raise ArchiveError(f"unknown archive format {archive_format!r}")
    target = export_path / f"{model_name}{_SUFFIX[archive_format]}"
    if target.exists() and not force:
        raise ArchiveError(f"{target} already exists.\nPlease specify --force/-f option to overwrite the model archive output file.")
    files: dict[str, Path] = {}
    for given in (serialized_file, model_file, requirements_file, config_file):
        if given:
            path = Path(given)
            if not path.is_file():
                raise ArchiveError(f"File does not exist: {given}")
            files[path.name] = path
    handler_path = _handler_path(handler)
    if handler_path is not None:
        if not handler_path.is_file():
            raise ArchiveError(f"handler file does not exist: {handler_path}")
        files[handler_path.name] = handler_path
    if extra_files:
        files.update(_extra_files(extra_files))
    content = json.dumps(
        manifest(model_name, version, handler, serialized_file, model_file, requirements_file, config_file, runtime),
        indent=2,
    ).encode()
    export_path.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        shutil.rmtree(target)
    if archive_format == "no-archive":
        for name, path in files.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / name)
        (target / "MAR-INF").mkdir(parents=True, exist_ok=True)
        (target / "MAR-INF" / "MANIFEST.json").write_bytes(content)
    elif archive_format == "tgz":
        with tarfile.open(target, "w:gz") as tar:
            for name, path in files.items():
                tar.add(path, arcname=f"{model_name}/{name}")
            info = tarfile.TarInfo(f"{model_name}/MAR-INF/MANIFEST.json")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    else:
        mode = zipfile.ZIP_STORED if archive_format == "zip-store" else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(target, "w", mode) as z:
            for name, path in files.items():
                z.write(path, name)
            z.writestr("MAR-INF/MANIFEST.json", content)
    return target


def add_arguments(p: argparse.ArgumentParser) -> None:
    """torch-model-archiver's flags."""
    p.add_argument("--model-name", required=True, help="archive and model name")
    p.add_argument("--serialized-file", help="TorchScript (.pt) or ONNX (.onnx) model, or an eager state_dict")
    p.add_argument("--model-file", help="eager mode: Python file with the model class (needs --allow-custom-handlers to serve)")
    p.add_argument("--handler", required=True, help="built-in handler name (image_classifier, base_handler) or handler file")
    p.add_argument("--extra-files", help="comma-separated extra files (globs and folders allowed)")
    p.add_argument("--runtime", default="python", choices=["python", "python3", "LSP"],
                   help="the runtime recorded in the manifest (default python)")
    p.add_argument("--export-path", default=os.getcwd(), help="where the archive is written (default: current folder)")
    p.add_argument("--archive-format", default="default", choices=["tgz", "no-archive", "zip-store", "default"],
                   help="default: a .mar zip; tgz: a .tar.gz; no-archive: a folder; zip-store: an uncompressed .mar"
                        " (default default)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing archive")
    p.add_argument("-v", "--version", required=True, help="model version, e.g. 1.0")
    p.add_argument("-r", "--requirements-file", help="requirements.txt (stored, never installed by triserve)")
    p.add_argument("-c", "--config-file", help="model YAML config (batchSize, maxBatchDelay, minWorkers, ...)")


def archive_main(args: argparse.Namespace) -> int:
    try:
        path = write_archive(
            args.model_name, args.version, args.handler, Path(args.export_path), args.serialized_file,
            args.model_file, args.extra_files, args.requirements_file, args.config_file, args.runtime,
            args.archive_format, args.force,
        )
    except ArchiveError as e:
        print(f"triserve archive: {e}")
        return 1
    print(f"model archive written to {path}")
    return 0
