"""HTTP over raw sockets, for tests that send what no HTTP client would: an HTTPFrontEnd started
in-process on a free port, requests written byte by byte, answers parsed by hand."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import zlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable

import orjson

from tests.conftest import free_port
from triserve.options import HTTPOptions
from triserve.protocols.transport.http import HTTPFrontEnd

WAIT = 30.0  # seconds a test waits for the server: long enough for a busy machine, short of a hang


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@contextlib.asynccontextmanager
async def serving(app: Any, options: HTTPOptions = HTTPOptions(), **kwargs: Any) -> AsyncIterator[int]:
    """`app` served by a real HTTPFrontEnd on a free port; yields the port."""
    port = free_port()
    frontend = HTTPFrontEnd(app, "127.0.0.1", port, options, **kwargs)
    await frontend.start()
    try:
        yield port
    finally:
        await frontend.stop()


class Connection:
    """One client connection on a plain socket. Bytes received before a reset stay readable
    (asyncio's streams raise the reset first, even over an answer already received)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.ended = False  # the server closed (or reset) the connection

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _fill(self) -> None:
        try:
            data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 1 << 16), WAIT)
        except ConnectionResetError:
            data = b""
        if not data:
            self.ended = True
        self.buffer += data

    async def _take(self, size: int) -> bytes:
        while len(self.buffer) < size and not self.ended:
            await self._fill()
        if len(self.buffer) < size:
            raise ConnectionError(f"the connection ended {size - len(self.buffer)} bytes short")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def _line(self, end: bytes = b"\r\n") -> bytes:
        while (at := self.buffer.find(end)) < 0:
            if self.ended:
                raise ConnectionError(f"the connection ended before {end!r}: {bytes(self.buffer[:200])!r}")
            await self._fill()
        return await self._take(at + len(end))

    async def answer(self) -> Answer:
        head = await self._line(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self._take(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int((await self._line()).strip(), 16):
                parts.append((await self._take(size + 2))[:-2])
            await self._line()
            body = b"".join(parts)
        else:
            body = await self.rest()
        return Answer(int(status_line.split()[1]), headers, body)

    async def rest(self) -> bytes:
        """Everything the server still sends before it ends the connection."""
        while not self.ended:
            await self._fill()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def send_until_answered(self, pieces: Iterable[bytes]) -> tuple[Answer, int]:
        """Send `pieces` while reading the answer; the answer, and how many bytes had gone out
        when it came (the server may end the connection once it answered)."""
        sent = 0

        async def send() -> None:
            nonlocal sent
            with contextlib.suppress(ConnectionError, OSError):
                for piece in pieces:
                    await self.send(piece)
                    sent += len(piece)

        sender = asyncio.create_task(send())
        try:
            answer = await self.answer()
        finally:
            written = sent
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return answer, written

    def close(self) -> None:
        self.sock.close()


async def connect(port: int) -> Connection:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return Connection(sock)


async def exchange(port: int, data: bytes) -> Answer:
    """Send `data` on a new connection; the answer."""
    connection = await connect(port)
    try:
        await connection.send(data)
        return await connection.answer()
    finally:
        connection.close()


def request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def bomb(encoding: str, size: int = 1 << 30, piece: int = 1 << 20) -> bytes:
    """A valid gzip or deflate (zlib) stream of `size` zero bytes, about 1 MB per GiB, made
    without ever holding the inflated bytes: one compressed MiB, flushed so that it refers to
    nothing before it, repeated."""
    zeros = bytes(piece)
    raw = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = raw.compress(zeros) + raw.flush(zlib.Z_FULL_FLUSH)
    end = raw.flush()
    checksum = zlib.crc32 if encoding == "gzip" else zlib.adler32
    check = 0 if encoding == "gzip" else 1
    for _ in range(size // piece):
        check = checksum(zeros, check)
    if encoding == "gzip":
        head, tail = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", struct.pack("<II", check, size & 0xFFFFFFFF)
    else:
        head, tail = b"\x78\xda", struct.pack(">I", check)
    return head + block * (size // piece) + end + tail
