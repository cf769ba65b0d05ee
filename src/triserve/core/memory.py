"""Keep resident memory honest on glibc: few malloc arenas, and freed pages handed back.

Every thread that allocates gets its own glibc arena (up to 8 per core); model weights loaded
and freed on different threads then leave tens of MiB of free-but-resident memory behind, and
RSS after an unload looks like a leak (Triton users reach for jemalloc for the same reason).
Elsewhere than glibc both calls do nothing.
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h
ARENAS = 1  # model threads allocate little per request (onnxruntime keeps its own arena)

try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.malloc_trim  # noqa: B018 (glibc only)
    _libc.mallopt
except (OSError, AttributeError):
    _libc = None


def limit_arenas() -> None:
    """Call before threads start allocating."""
    if _libc is not None:
        _libc.mallopt(M_ARENA_MAX, ARENAS)


def release_free_memory() -> None:
    if _libc is not None:
        _libc.malloc_trim(0)
