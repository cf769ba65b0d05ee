"""Request bodies under a cap: refused before reading past it, and inflated through it."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest
from starlette.requests import Request

from tests.rawhttp import bomb
from triserve.errors import Code, ServerError
from triserve.protocols.transport.bodies import BodyTooLarge, inflate, read_body

pytestmark = pytest.mark.anyio
MiB = 1 << 20


class Client:
    """The ASGI receive side of one request: its body in pieces, and how many were read."""

    def __init__(self, pieces: list[bytes], content_length: int | None = None) -> None:
        self.pieces = pieces
        self.read = 0
        headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
        self.request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, self.receive)

    async def receive(self) -> dict:
        self.read += 1
        more = self.read < len(self.pieces)
        return {"type": "http.request", "body": self.pieces[self.read - 1], "more_body": more}


async def test_a_body_within_the_limit_is_read_whole():
    client = Client([b"ab", b"cd", b"e"])
    assert await read_body(client.request, 5) == b"abcde"


async def test_a_content_length_over_the_limit_is_refused_before_any_byte_is_read():
    client = Client([b"x"], content_length=1 << 30)
    with pytest.raises(BodyTooLarge) as refused:
        await read_body(client.request, 64 * MiB)
    assert client.read == 0
    assert refused.value.message == (
        "request size of 1073741824 bytes exceeds the maximum allowed input size of 67108864 bytes."
        " Use --http-max-input-size to increase the limit."
    )


async def test_a_streamed_body_is_refused_at_the_first_piece_past_the_limit():
    client = Client([b"x" * 400] * 1000)  # chunked: no Content-Length
    with pytest.raises(BodyTooLarge) as refused:
        await read_body(client.request, 1000)
    assert client.read == 3  # 1200 bytes: the third piece passed the limit, no piece after it was read
    assert "request size of more than 1000 bytes exceeds the maximum allowed input size of 1000 bytes" in refused.value.message
    assert refused.value.limit == 1000


async def test_a_client_that_leaves_mid_body_is_unavailable_not_an_internal_error():
    client = Client([b"partial"])

    async def leave() -> dict:
        client.read += 1
        if client.read == 1:
            return {"type": "http.request", "body": b"partial", "more_body": True}
        return {"type": "http.disconnect"}

    client.request = Request(client.request.scope, leave)
    with pytest.raises(ServerError) as refused:
        await read_body(client.request, 1000)
    assert refused.value.code == Code.UNAVAILABLE
    assert refused.value.message == "client disconnected before the whole request body was received"


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_compressed_bodies_inflate_up_to_the_limit_exactly(encoding, compress):
    data = os.urandom(100_000) + bytes(900_000)
    assert await inflate(compress(data), encoding, len(data)) == data
    with pytest.raises(BodyTooLarge) as refused:
        await inflate(compress(data), encoding, len(data) - 1)
    assert refused.value.message == (
        "Decompressed data size exceeds the maximum allowed value of 999999 bytes. Use --http-max-input-size to"
        " increase the limit."
    )


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_1_gib_bomb_is_refused_at_the_limit(encoding):
    body = bomb(encoding)
    assert len(body) < 1.1 * MiB
    with pytest.raises(BodyTooLarge):
        await inflate(body, encoding, 64 * MiB)


async def test_a_gzip_body_of_several_members_inflates_to_all_of_them():
    assert await inflate(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 4) == b"abcd"


async def test_identity_and_no_encoding_leave_the_body_as_it_is():
    assert await inflate(b"plain", None, 1) == b"plain"  # the cap is read_body's
    assert await inflate(b"plain", "identity", 1) == b"plain"


@pytest.mark.parametrize("encoding, body", [
    ("gzip", b"\x1f\x8b\x08\x00garbage"),
    ("gzip", gzip.compress(b"x" * 1000)[:-20]),
    ("deflate", zlib.compress(b"x" * 1000)[:-8]),
    ("deflate", b"not zlib"),
])
async def test_corrupt_and_truncated_streams_are_400(encoding, body):
    with pytest.raises(ServerError) as refused:
        await inflate(body, encoding, MiB)
    assert not isinstance(refused.value, BodyTooLarge)
    assert refused.value.message.startswith(f"failed to decompress the request body as {encoding}: ")


async def test_an_unknown_encoding_is_400_naming_the_ones_supported():
    with pytest.raises(ServerError, match="unsupported Content-Encoding 'br', expected gzip, deflate or identity"):
        await inflate(b"x", "br", MiB)


async def test_a_large_body_with_a_content_length_is_written_into_one_buffer_as_it_arrives():
    pieces = [bytes([i]) * (256 << 10) for i in range(8)]  # 2 MiB in eight pieces
    client = Client(pieces, content_length=2 * MiB)
    body = await read_body(client.request, 64 * MiB, buffer=True)
    assert type(body) is bytearray and body == b"".join(pieces)
    assert client.read == 8


async def test_a_buffered_chunked_body_grows_one_buffer_and_a_small_one_is_joined_bytes():
    pieces = [b"x" * (1 << 20), b"y" * (1 << 20)]
    chunked = await read_body(Client(pieces).request, 64 * MiB, buffer=True)
    small = await read_body(Client([b"ab", b"cd"], content_length=4).request, 64 * MiB, buffer=True)
    plain = await read_body(Client(pieces).request, 64 * MiB)
    assert type(chunked) is bytearray and chunked == b"".join(pieces)
    assert type(small) is bytes and small == b"abcd"
    assert type(plain) is bytes and plain == b"".join(pieces)


async def test_a_buffered_body_that_ends_short_of_or_past_its_content_length_keeps_what_came():
    pieces = [b"a" * (1 << 20), b"b" * (1 << 19)]
    short = await read_body(Client(pieces, content_length=2 * MiB).request, 64 * MiB, buffer=True)
    assert short == b"".join(pieces)
    longer = await read_body(Client(pieces + [b"c" * (1 << 20)], content_length=(1 << 20) + 10).request,
                             64 * MiB, buffer=True)
    assert longer == b"".join(pieces) + b"c" * (1 << 20)


async def test_a_buffered_body_past_the_limit_is_still_refused_at_the_first_piece_past_it():
    client = Client([b"x" * (1 << 20)] * 8, content_length=3 * MiB)  # says 3 MiB, sends more
    with pytest.raises(BodyTooLarge):
        await read_body(client.request, 4 * MiB, buffer=True)
    assert client.read == 5
