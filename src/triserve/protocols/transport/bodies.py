"""Request bodies under a size cap, enforced while reading: a Content-Length over the cap is
refused before any byte of the body is read, a chunked body as soon as its bytes pass the cap,
and a compressed body is inflated incrementally, on a worker thread, through the same cap (a
1 MB gzip bomb stops at the cap; the whole 1 GiB never exists)."""

from __future__ import annotations

import asyncio
import functools
import zlib

from starlette.requests import ClientDisconnect, Request

from triserve.errors import Code, ServerError, invalid

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # gzip and zlib streams
_SLICE = 1 << 16  # compressed bytes fed to zlib at a time
_HINT = "Use --http-max-input-size to increase the limit."
BUFFER_FROM = 1 << 20  # bytes: read_body(buffer=True) writes a body over this into one preallocated buffer


class BodyTooLarge(ServerError):
    """A body over the cap; 400 as Triton answers it (TorchServe's front ends make it 413)."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message, Code.INVALID_ARG)
        self.limit = limit


async def read_body(request: Request, limit: int, buffer: bool = False) -> bytes | bytearray:
    """The whole body, at most `limit` bytes, or BodyTooLarge before reading more than that.
    With `buffer`, a body whose Content-Length is over BUFFER_FROM bytes comes as a bytearray of
    that length, each chunk copied into it as it arrives, and a chunked body (no Content-Length)
    as a bytearray grown chunk by chunk: no join of the whole body in one turn of the event loop
    (64 MiB of chunks joined at once held the loop for 60-130 ms on a busy machine). Callers
    that ask for it take any bytes-like body (parse_with hands a bytearray to a worker process as
    it is)."""
    length = request.headers.get("content-length")
    # The HTTP parser already refused a Content-Length that is not a number, or one sent with
    # Transfer-Encoding (400), so this one is a plain decimal.
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge(
            f"request size of {int(length)} bytes exceeds the maximum allowed input size of {limit} bytes. {_HINT}",
            limit,
        )
    expected = int(length) if buffer and length is not None and length.isdigit() else 0
    into = bytearray(expected) if expected > BUFFER_FROM else None  # filled in place
    grown = bytearray() if buffer and length is None else None  # appended to
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            if into is not None and size + len(chunk) <= len(into):
                into[size : size + len(chunk)] = chunk
                size += len(chunk)
                continue
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(
                    f"request size of more than {limit} bytes exceeds the maximum allowed input size of {limit}"
                    f" bytes. {_HINT}",
                    limit,
                )
            if into is not None:  # more than its Content-Length said (the HTTP parser does not let that happen)
                grown, into = into[: size - len(chunk)], None
            if grown is not None:
                grown += chunk
            else:
                chunks.append(chunk)
    except ClientDisconnect:  # nobody to answer: no error worth a stack trace in the log
        raise ServerError("client disconnected before the whole request body was received", Code.UNAVAILABLE) from None
    if into is not None:
        if size < len(into):
            del into[size:]  # the stream ended short of its Content-Length
        return into
    if grown is not None:
        return grown
    return b"".join(chunks)


async def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as its Content-Encoding says (gzip, deflate or identity), inflated on a worker
    thread and never past `limit` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise invalid(f"unsupported Content-Encoding '{encoding}', expected gzip, deflate or identity")
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(_inflate, body, encoding, limit))


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    stream = zlib.decompressobj(_WBITS[encoding])
    view = memoryview(body)
    position = 0
    pending: bytes | memoryview = b""  # input zlib has not taken yet
    try:
        while True:
            if not pending and position < len(view):
                pending = view[position : position + _SLICE]
                position += len(pending)
            # never more output than one byte past the cap
            chunk = stream.decompress(pending, limit - size + 1)
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(
                    f"Decompressed data size exceeds the maximum allowed value of {limit} bytes. {_HINT}", limit
                )
            parts.append(chunk)
            pending = stream.unconsumed_tail
            if stream.eof:
                pending = stream.unused_data  # at most one slice: what follows this stream
                if encoding != "gzip" or not (pending or position < len(view)):
                    break  # deflate: what follows the stream is ignored, as zlib.decompress does
                stream = zlib.decompressobj(_WBITS[encoding])  # a gzip body may hold several members
            elif not chunk and not pending and position >= len(view):
                raise zlib.error("the compressed data ends before the end of its stream")
    except zlib.error as e:
        raise invalid(f"failed to decompress the request body as {encoding}: {e}") from None
    return b"".join(parts)
