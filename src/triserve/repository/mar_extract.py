"""Safe unpacking of TorchServe model archives: zip (.mar), tgz and plain folders.

Every entry is checked before anything is written: absolute paths, `..`, over-long names, links,
devices and oversized content refuse the whole archive (zip-slip, tar-slip and decompression
bombs), and files are only ever created below the extraction folder. TorchServe's own extraction
was exploitable this way before 0.9.0 (reference A.5.7).

Sizes are the entries' declared uncompressed sizes, which also bound what reading them can
give (zipfile and tarfile stop at the declared size), so a bomb is refused from its listing:
a zip's central directory, or a tar's member headers read one by one (a member whose header
passes a limit is refused before its content is decompressed). Limits: the archive's files in
total and each entry at most `max_bytes`; the archive as a whole, and each zip entry, at most
`max_ratio` times its compressed size once over RATIO_FLOOR bytes (a tar's members share one
compressed stream, so only the archive's ratio applies to them).
"""

from __future__ import annotations

import json
import logging
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from triserve.errors import invalid
from triserve.options import DEFAULT_MAX_ARCHIVE_RATIO, DEFAULT_MAX_ARCHIVE_SIZE

log = logging.getLogger("triserve")

MANIFEST = "MAR-INF/MANIFEST.json"
MAX_ENTRIES = 100_000
RATIO_FLOOR = 1024**2  # smaller content cannot be a bomb: the ratio is checked above this size
MAX_NAME_BYTES = 255  # one path component (the file systems' NAME_MAX)
MAX_PATH_BYTES = 1024  # a whole relative path, far below PATH_MAX with the extraction folder before it
_CHUNK = 1 << 20
# What corrupt archive data raises while it is read (besides OSError and EOFError).
_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class Limits:
    """How large an archive may be once unpacked (--max-archive-size, --max-archive-ratio)."""

    max_bytes: int = DEFAULT_MAX_ARCHIVE_SIZE
    max_ratio: float = DEFAULT_MAX_ARCHIVE_RATIO


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


def shown(name: str, limit: int = 100) -> str:
    """A client-given name as a message quotes it: repr-quoted, long ones cut."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


def path_problem(name: str) -> str | None:
    """Why `name` cannot be a file path below a folder (None: it can): what it contains or is."""
    if "\\" in name or "\x00" in name:
        return "contains a backslash or NUL"
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        return "is an absolute path"
    if ".." in path.parts:
        return "points outside the folder ('..')"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in path.parts):
        return f"has a name longer than {MAX_NAME_BYTES} bytes"
    return None


def _safe_name(name: str, archive: str) -> PurePosixPath:
    """A relative path with no `..`, no drive, no backslash tricks, no over-long names."""
    problem = path_problem(name)
    if problem is not None:
        raise invalid(f"archive {archive} refused: entry {shown(name)} {problem}")
    return PurePosixPath(*[p for p in PurePosixPath(name).parts if p not in ("", ".")])


def reason(error: BaseException) -> str:
    """What went wrong, without the server-side file name an OSError carries."""
    if isinstance(error, OSError) and (error.filename is not None or error.strerror):
        return error.strerror or type(error).__name__
    return str(error) or type(error).__name__


class _Sizes:
    """Running totals of the entries listed so far; a limit passed refuses the archive at once."""

    def __init__(self, archive: str, compressed: int | None, limits: Limits) -> None:
        self.archive = archive
        self.compressed = compressed  # the archive file's size (None: a folder, nothing compressed)
        self.limits = limits
        self.count = 0
        self.total = 0

    def add(self, name: str, size: int, compressed: int | None = None) -> None:
        limits, where = self.limits, f"archive {self.archive} refused"
        if size > limits.max_bytes:
            raise invalid(f"{where}: entry {shown(name)} is {size} bytes uncompressed, more than the limit of"
                          f" {limits.max_bytes} bytes (--max-archive-size)")
        if compressed is not None and size > RATIO_FLOOR and size > limits.max_ratio * max(compressed, 1):
            raise invalid(f"{where}: entry {shown(name)} expands from {compressed} to {size} bytes, more than"
                          f" {limits.max_ratio:g} times (--max-archive-ratio); it looks like a decompression bomb")
        self.count += 1
        self.total += size
        if self.count > MAX_ENTRIES:
            raise invalid(f"{where}: more than {MAX_ENTRIES} entries")
        if self.total > limits.max_bytes:
            raise invalid(f"{where}: its files are more than {limits.max_bytes} bytes uncompressed"
                          " (--max-archive-size)")
        compressed = self.compressed
        if compressed is not None and self.total > RATIO_FLOOR and self.total > limits.max_ratio * max(compressed, 1):
            raise invalid(f"{where}: its {compressed} bytes expand to {self.total} bytes or more, more than"
                          f" {limits.max_ratio:g} times (--max-archive-ratio); it looks like a decompression bomb")


class _Entry:
    def __init__(self, path: PurePosixPath, size: int, is_dir: bool) -> None:
        self.path = path
        self.size = size
        self.is_dir = is_dir


def _zip_entries(z: zipfile.ZipFile, archive: str, sizes: _Sizes) -> list[tuple[_Entry, zipfile.ZipInfo]]:
    entries = []
    for info in z.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise invalid(f"archive {archive} refused: entry {shown(info.filename)} is a symbolic link")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # no type bits: a file
            raise invalid(f"archive {archive} refused: entry {shown(info.filename)} is not a regular file")
        if info.flag_bits & 0x1:
            raise invalid(f"archive {archive} refused: entry {shown(info.filename)} is encrypted")
        path = _safe_name(info.filename, archive)
        sizes.add(info.filename, info.file_size, info.compress_size)
        entries.append((_Entry(path, info.file_size, info.is_dir()), info))
    return entries


def _tar_entries(t: tarfile.TarFile, archive: str, sizes: _Sizes) -> list[tuple[_Entry, tarfile.TarInfo]]:
    entries = []
    for info in t:  # header by header: the next header is only read (past this content) if this one passes
        if info.issym() or info.islnk():
            raise invalid(f"archive {archive} refused: entry {shown(info.name)} is a link")
        if not (info.isfile() or info.isdir()):
            raise invalid(f"archive {archive} refused: entry {shown(info.name)} is not a regular file")
        path = _safe_name(info.name, archive)
        sizes.add(info.name, info.size)
        entries.append((_Entry(path, info.size, info.isdir()), info))
    return entries


def _folder_entries(root: Path, archive: str, sizes: _Sizes) -> list[tuple[_Entry, Path]]:
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
            sizes.add(str(relative), info.st_size)
            entries.append((_Entry(relative, info.st_size, stat.S_ISDIR(info.st_mode)), path))
    return entries


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

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = path
        self.name = path.name
        self.limits = limits
        self.kind = archive_kind(path)
        self._handle: zipfile.ZipFile | tarfile.TarFile | None = None
        try:
            sizes = _Sizes(self.name, None if self.kind == "folder" else path.stat().st_size, limits)
            if self.kind == "zip":
                self._handle = zipfile.ZipFile(path)
                pairs: list = _zip_entries(self._handle, self.name, sizes)
            elif self.kind == "tgz":
                self._handle = tarfile.open(path, "r:*")
                pairs = _tar_entries(self._handle, self.name, sizes)
            else:
                pairs = _folder_entries(path, self.name, sizes)
        except (*_CORRUPT, OSError, EOFError) as e:
            self.close()
            log.warning("archive %s could not be read: %r", path, e)
            raise invalid(f"archive {self.name} could not be read: {reason(e)}") from None
        except BaseException:
            self.close()
            raise
        self.prefix = _prefix([e for e, _ in pairs])
        self.entries: list[tuple[PurePosixPath, _Entry, object]] = []
        seen = set()
        for entry, source in pairs:
            relative = _strip(entry.path, self.prefix)
            if relative is None or not relative.parts:
                continue
            if not entry.is_dir:
                if relative in seen:
                    raise invalid(f"archive {self.name} refused: entry {shown(str(relative))} appears twice")
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
                raise invalid(f"archive {self.name}: an entry has no content")
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
        budget = self.limits.max_bytes  # the declared sizes passed this; real bytes are counted all the same
        for relative, entry, source in self.entries:
            destination = root.joinpath(*relative.parts)
            if not destination.resolve().is_relative_to(root):  # belt and braces after _safe_name
                raise invalid(f"archive {self.name} refused: entry {shown(str(relative))} leaves the extraction"
                              " folder")
            if entry.is_dir:
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with self._open(source) as src, open(destination, "xb") as dst:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    budget -= len(chunk)
                    if budget < 0:
                        raise invalid(f"archive {self.name} refused: its files are more than {self.limits.max_bytes}"
                                      " bytes uncompressed (--max-archive-size)")
                    dst.write(chunk)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class Archive:
    """An opened archive: its manifest and file list, read without writing anything."""

    def __init__(self, path: Path, limits: Limits = Limits()) -> None:
        self._opened = _Opened(path, limits)
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
        except (*_CORRUPT, OSError, EOFError) as e:  # corrupt data, name clashes
            shutil.rmtree(target, ignore_errors=True)
            log.warning("archive %s could not be extracted to %s: %r", self.path, target, e)
            raise invalid(f"archive {self.path.name} could not be extracted: {reason(e)}") from None
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
