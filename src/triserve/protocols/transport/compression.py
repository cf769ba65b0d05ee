"""HTTP pieces every front end shares: body decompression and response compression."""

from __future__ import annotations

import gzip
import zlib

from triserve.errors import invalid


def decompress(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, EOFError, zlib.error) as e:
        raise invalid(f"failed to decompress the request body as {encoding}: {e}") from None
    raise invalid(f"unsupported Content-Encoding '{encoding}', expected gzip, deflate or identity")


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
