"""Response compression as the client accepts it (request bodies inflate in bodies.py)."""

from __future__ import annotations

import gzip
import zlib


def choose_encoding(accept_encoding: str | None) -> str | None:
    """The best of gzip/deflate by the client's q-values; None means identity."""
    if not accept_encoding:
        return None
    best, best_q = None, 0.0
    for part in accept_encoding.split(","):
        name, _, params = part.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue  # malformed entries are skipped, as Triton does
        if name in ("gzip", "deflate", "identity") and q > best_q:
            best, best_q = name, q
    return None if best == "identity" else best


def compress(body: bytes, encoding: str) -> bytes:
    return gzip.compress(body, compresslevel=5) if encoding == "gzip" else zlib.compress(body)
