"""Tensors between the server and a Python model's stub process, through shared memory.

One message's tensors travel in one segment: a file in /dev/shm (tmpfs: memory, not disk)
that the sender creates and fills and the receiver maps and unlinks at once. The pipe between
the processes carries only names, dtypes, shapes and offsets. The receiver's arrays are views
of the mapping (no copy); the memory goes when the last of them does.

BYTES tensors (numpy object arrays) are written as Triton serializes them: each element a
4-byte little-endian length, then its bytes.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
import tempfile
from dataclasses import dataclass

import numpy as np

_ALIGN = 64
_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
PREFIX = "triserve-pb-"


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: str  # numpy dtype string; "bytes" for BYTES (object) tensors
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Packed:
    """What the pipe carries for a set of tensors: the segment (None when all are empty) and where each is."""

    segment: str | None
    tensors: tuple[TensorMeta, ...]


def _serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray, memoryview)):
            item = str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def _deserialize_bytes(buffer: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    out = np.empty(count, dtype=np.object_)
    pos = 0
    for i in range(count):
        (length,) = struct.unpack_from("<I", buffer, pos)
        pos += 4
        out[i] = bytes(buffer[pos:pos + length])
        pos += length
    return out.reshape(shape)


def pack(tensors: list[tuple[str, np.ndarray]]) -> Packed:
    """Write tensors into a new segment; the receiver must `unpack` (or `discard`) it."""
    blobs: list[tuple[str, str, tuple[int, ...], object]] = []
    for name, array in tensors:
        array = np.asarray(array)
        if array.dtype.kind in "OSU":
            blobs.append((name, "bytes", tuple(array.shape), _serialize_bytes(array)))
        else:
            blobs.append((name, array.dtype.str, tuple(array.shape), np.ascontiguousarray(array)))
    metas, offset = [], 0
    for name, dtype, shape, blob in blobs:
        nbytes = len(blob) if isinstance(blob, bytes) else blob.nbytes  # type: ignore[union-attr]
        metas.append(TensorMeta(name, dtype, shape, offset, nbytes))
        offset += (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    if offset == 0:
        return Packed(None, tuple(metas))
    segment = PREFIX + secrets.token_hex(8)
    path = os.path.join(_DIR, segment)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, offset)
        with mmap.mmap(fd, offset) as region:
            for meta, (_, _, _, blob) in zip(metas, blobs):
                if meta.nbytes:
                    view = blob if isinstance(blob, bytes) else memoryview(blob).cast("B")  # type: ignore[arg-type]
                    region[meta.offset:meta.offset + meta.nbytes] = view
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return Packed(segment, tuple(metas))


def unpack(packed: Packed) -> dict[str, np.ndarray]:
    """Map a segment and unlink it; the arrays are views of the mapping (BYTES ones are copies)."""
    if packed.segment is None:
        return {m.name: _empty(m) for m in packed.tensors}
    path = os.path.join(_DIR, _checked(packed.segment))
    fd = os.open(path, os.O_RDWR)
    try:
        os.unlink(path)
        size = os.fstat(fd).st_size
        region = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    out = {}
    for m in packed.tensors:
        if m.nbytes == 0:
            out[m.name] = _empty(m)
        elif m.dtype == "bytes":
            out[m.name] = _deserialize_bytes(memoryview(region)[m.offset:m.offset + m.nbytes], m.shape)
        else:
            out[m.name] = np.frombuffer(region, dtype=np.dtype(m.dtype), count=m.nbytes // np.dtype(m.dtype).itemsize,
                                        offset=m.offset).reshape(m.shape)
    return out


def discard(packed: Packed | None) -> None:
    """Remove a segment nobody will unpack (its receiver died)."""
    if packed is not None and packed.segment is not None:
        try:
            os.unlink(os.path.join(_DIR, _checked(packed.segment)))
        except FileNotFoundError:
            pass


def _checked(segment: str) -> str:
    if not segment.startswith(PREFIX) or "/" in segment or segment in (".", ".."):
        raise ValueError("not a tensor segment name")
    return segment


def _empty(m: TensorMeta) -> np.ndarray:
    return np.empty(m.shape, dtype=np.object_ if m.dtype == "bytes" else np.dtype(m.dtype))
