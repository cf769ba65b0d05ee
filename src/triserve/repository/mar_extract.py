"""Safe unpacking of TorchServe model archives: zip (.mar), tgz and plain folders.

Every entry is checked before anything is written: absolute paths, `..`, links, devices and
oversized content refuse the whole archive (zip-slip, tar-slip and decompression bombs), and
files are only ever created below the extraction folder. TorchServe's own extraction was
exploitable this way before 0.9.0 (reference A.5.7).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from triserve.errors import invalid

MANIFEST = "MAR-INF/MANIFEST.json"
MAX_TOTAL_BYTES = 16 * 1024**3  # all files of one archive, uncompressed
MAX_ENTRIES = 100_000
_CHUNK = 1 << 20


def archive_kind(path: Path) -> str:
    """'zip', 'tgz' or 'folder'; anything else is refused."""
    if path.is_symlink():
        raise invalid(f"model archive {path.name} is a symbolic link")
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise invalid(f"model archive {path.name} not found")
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tgz"
    except OSError:
        pass
    raise invalid(f"{path.name} is not a model archive (expected a .mar zip, a .tar.gz or a folder)")


def _safe_name(name: str, archive: str) -> PurePosixPath:
    """A relative path with no `..`, no drive, no backslash tricks."""
    if "\\" in name or "\x00" in name:
        raise invalid(f"archive {archive} refused: entry name {name!r} contains a backslash or NUL")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise invalid(f"archive {archive} refused: entry {name!r} has an absolute path")
    if ".." in path.parts:
        raise invalid(f"archive {archive} refused: entry {name!r} points outside the archive ('..')")
    return PurePosixPath(*[p for p in path.parts if p not in ("", ".")])


class _Entry:
    def __init__(self, path: PurePosixPath, size: int, is_dir: bool) -> None:
        self.path = path
        self.size = size
        self.is_dir = is_dir


def _zip_entries(z: zipfile.ZipFile, archive: str) -> list[tuple[_Entry, zipfile.ZipInfo]]:
    entries = []
    for info in z.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise invalid(f"archive {archive} refused: entry {info.filename!r} is a symbolic link")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # no type bits: a file
            raise invalid(f"archive {archive} refused: entry {info.filename!r} is not a regular file")
        if info.flag_bits & 0x1:
            raise invalid(f"archive {archive} refused: entry {info.filename!r} is encrypted")
        entries.append((_Entry(_safe_name(info.filename, archive), info.file_size, info.is_dir()), info))
    return entries


def _tar_entries(t: tarfile.TarFile, archive: str) -> list[tuple[_Entry, tarfile.TarInfo]]:
    entries = []
    for info in t.getmembers():
        if info.issym() or info.islnk():
            raise invalid(f"archive {archive} refused: entry {info.name!r} is a link")
        if not (info.isfile() or info.isdir()):
            raise invalid(f"archive {archive} refused: entry {info.name!r} is not a regular file")
        entries.append((_Entry(_safe_name(info.name, archive), info.size, info.isdir()), info))
    return entries


def _folder_entries(root: Path, archive: str) -> list[tuple[_Entry, Path]]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise invalid(f"archive {archive} refused: {path.relative_to(root)} is a symbolic link")
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                raise invalid(f"archive {archive} refused: {path.relative_to(root)} is not a regular file")
            relative = PurePosixPath(path.relative_to(root).as_posix())
            entries.append((_Entry(relative, info.st_size, stat.S_ISDIR(info.st_mode)), path))
    return entries


def _check_totals(entries: list[_Entry], archive: str) -> None:
    if len(entries) > MAX_ENTRIES:
        raise invalid(f"archive {archive} refused: more than {MAX_ENTRIES} entries")
    total = sum(e.size for e in entries)
    if total > MAX_TOTAL_BYTES:
        raise invalid(f"archive {archive} refused: {total} bytes uncompressed is more than {MAX_TOTAL_BYTES}")


def _prefix(entries: list[_Entry]) -> PurePosixPath | None:
    """tgz archives hold `<name>/...` (torch-model-archiver --archive-format tgz): strip that folder."""
    if any(e.path == PurePosixPath(MANIFEST) for e in entries):
        return None
    tops = {e.path.parts[0] for e in entries if e.path.parts}
    if len(tops) == 1:
        top = PurePosixPath(tops.pop())
        if any(e.path == top / MANIFEST for e in entries):
            return top
    return None


def _strip(path: PurePosixPath, prefix: PurePosixPath | None) -> PurePosixPath | None:
    if prefix is None:
        return path
    if path == prefix:
        return None
    return path.relative_to(prefix)


class _Opened:
    """The entries of one archive, listed and checked, ready to read or extract."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.kind = archive_kind(path)
        self._handle: zipfile.ZipFile | tarfile.TarFile | None = None
        try:
            if self.kind == "zip":
                self._handle = zipfile.ZipFile(path)
                pairs: list = _zip_entries(self._handle, self.name)
            elif self.kind == "tgz":
                self._handle = tarfile.open(path, "r:*")
                pairs = _tar_entries(self._handle, self.name)
            else:
                pairs = _folder_entries(path, self.name)
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
            self.close()
            raise invalid(f"archive {self.name} could not be read: {e}") from None
        except BaseException:
            self.close()
            raise
        _check_totals([e for e, _ in pairs], self.name)
        self.prefix = _prefix([e for e, _ in pairs])
        self.entries: list[tuple[PurePosixPath, _Entry, object]] = []
        seen = set()
        for entry, source in pairs:
            relative = _strip(entry.path, self.prefix)
            if relative is None or not relative.parts:
                continue
            if not entry.is_dir:
                if relative in seen:
                    raise invalid(f"archive {self.name} refused: entry {relative} appears twice")
                seen.add(relative)
            self.entries.append((relative, entry, source))

    def files(self) -> set[str]:
        return {str(p) for p, e, _ in self.entries if not e.is_dir}

    def _open(self, source: object) -> IO[bytes]:
        if self.kind == "zip":
            return self._handle.open(source)  # type: ignore[union-attr, arg-type]
        if self.kind == "tgz":
            f = self._handle.extractfile(source)  # type: ignore[union-attr, arg-type]
            if f is None:
                raise invalid(f"archive {self.name}: entry {source} has no content")
            return f
        return open(source, "rb")  # type: ignore[arg-type]

    def read(self, relative: str, limit: int = 64 * 1024**2) -> bytes:
        for path, entry, source in self.entries:
            if str(path) == relative and not entry.is_dir:
                with self._open(source) as f:
                    data = f.read(limit + 1)
                if len(data) > limit:
                    raise invalid(f"archive {self.name}: {relative} is larger than {limit} bytes")
                return data
        raise invalid(f"archive {self.name} has no {relative}")

    def extract(self, target: Path) -> None:
        """Write every file below `target` (an empty folder), counting real bytes as they come."""
        root = target.resolve()
        budget = MAX_TOTAL_BYTES
        for relative, entry, source in self.entries:
            destination = root.joinpath(*relative.parts)
            if not destination.resolve().is_relative_to(root):  # belt and braces after _safe_name
                raise invalid(f"archive {self.name} refused: entry {relative} leaves the extraction folder")
            if entry.is_dir:
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with self._open(source) as src, open(destination, "xb") as dst:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    budget -= len(chunk)
                    if budget < 0:
                        raise invalid(f"archive {self.name} refused: more than {MAX_TOTAL_BYTES} bytes uncompressed")
                    dst.write(chunk)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class Archive:
    """An opened archive: its manifest and file list, read without writing anything."""

    def __init__(self, path: Path) -> None:
        self._opened = _Opened(path)
        self.path = path
        self.files = self._opened.files()
        if MANIFEST not in self.files:
            self._opened.close()
            raise invalid(f"archive {path.name} has no {MANIFEST}; is it a TorchServe model archive?")
        try:
            manifest = json.loads(self._opened.read(MANIFEST, 1024**2))
        except (ValueError, UnicodeDecodeError) as e:
            self._opened.close()
            raise invalid(f"archive {path.name}: {MANIFEST} is not valid JSON: {e}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
            self._opened.close()
            raise invalid(f"archive {path.name}: {MANIFEST} has no 'model' object")
        self.manifest: dict = manifest

    def read(self, relative: str, limit: int = 64 * 1024**2) -> bytes:
        return self._opened.read(relative, limit)

    def extract(self, target: Path) -> None:
        """Unpack into `target`, which must not exist yet; on any failure nothing is left behind."""
        target.mkdir(parents=True)
        try:
            self._opened.extract(target)
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as e:  # corrupt data, name clashes
            shutil.rmtree(target, ignore_errors=True)
            raise invalid(f"archive {self.path.name} could not be extracted: {e}") from None
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def close(self) -> None:
        self._opened.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_store(store: Path) -> Iterator[Path]:
    """Archives directly inside a model store (TorchServe's `--models all`)."""
    for entry in sorted(store.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.endswith((".mar", ".tar.gz", ".tgz", ".model")):
            yield entry
        elif entry.is_dir() and not entry.is_symlink() and (entry / MANIFEST).is_file():
            yield entry
