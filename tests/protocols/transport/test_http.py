"""HTTPFrontEnd over real sockets: header limits (431), the header and body timeouts, the
connection cap (503), bodies nobody reads, and the request log."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.rawhttp import chunk, connect, exchange, request, serving
from triserve.options import HTTPOptions
from triserve.protocols.transport.http import DRAIN_BYTES, FEED_BYTES

pytestmark = pytest.mark.anyio
MiB = 1 << 20


async def live(request: Request) -> Response:
    return PlainTextResponse("live")


async def length(request: Request) -> Response:
    return PlainTextResponse(str(len(await request.body())))


async def late(request: Request) -> Response:
    await asyncio.sleep(0.5)  # pacing a slow app: the body timeout (0.2 s) passes while it has not read
    return PlainTextResponse(str(len(await request.body())))


async def early(request: Request) -> Response:
    return PlainTextResponse("answered before the body", 400)  # reads none of it


APP = Starlette(routes=[Route("/live", live), Route("/length", length, methods=["POST"]),
                        Route("/late", late, methods=["POST"]), Route("/early", early, methods=["POST"])])


def headers(count: int, size: int = 1) -> dict[str, str]:
    return {f"X-Field-{i}": "v" * size for i in range(count)}


async def test_requests_within_the_header_limits_are_served_one_after_another_on_one_connection():
    async with serving(APP, HTTPOptions(max_headers=10, max_header_size=4096)) as port:
        connection = await connect(port)
        for _ in range(3):  # the counts start again with each request
            await connection.send(request("GET", "/live", headers(9, 300)))  # Host makes 10 fields, about 2.8 KB
            answer = await connection.answer()
            assert (answer.status, answer.body) == (200, b"live")
        connection.close()


async def test_more_header_fields_than_allowed_get_431_naming_the_limit_and_its_flag():
    async with serving(APP, HTTPOptions(max_headers=100)) as port:
        assert (await exchange(port, request("GET", "/live", headers(99)))).status == 200
        connection = await connect(port)
        await connection.send(request("GET", "/live", headers(1000)))
        answer = await connection.answer()
        assert answer.status == 431
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert answer.body == b"too many header fields: 1001, at most 100 (--http-max-headers)"
        assert await connection.rest() == b""  # and the connection is closed


async def test_headers_over_the_size_limit_get_431_before_the_rest_is_sent():
    async with serving(APP, HTTPOptions(max_header_size=64 * 1024)) as port:
        connection = await connect(port)
        head = b"GET /live HTTP/1.1\r\nHost: test\r\nX-Big: "
        endless = itertools.chain([head], itertools.repeat(b"a" * 65536, 4096))  # a 256 MiB header
        answer, sent = await connection.send_until_answered(endless)
        assert answer.status == 431
        assert answer.body == b"request header fields too large: more than 65536 bytes (--http-max-header-size)"
        assert sent < 32 * MiB  # cut off long before its end (what the sockets' buffers took counts as sent)
        connection.close()


async def test_a_1_mib_header_sent_whole_gets_its_431():
    async with serving(APP) as port:
        answer = await exchange(port, request("GET", "/live", {"X-Big": "a" * MiB}))
        assert answer.status == 431 and b"--http-max-header-size" in answer.body


async def test_complete_headers_over_the_size_limit_get_431_too():
    async with serving(APP, HTTPOptions(max_header_size=1024)) as port:
        answer = await exchange(port, request("GET", "/live", headers(3, 500)))
        assert answer.status == 431 and b"--http-max-header-size" in answer.body


async def test_a_connection_whose_headers_are_not_complete_in_time_is_closed_with_408():
    async with serving(APP, HTTPOptions(header_timeout=0.2)) as port:
        connection = await connect(port)
        await connection.send(b"GET /live HTTP/1.1\r\nHost: te")  # and nothing more
        answer = await connection.answer()
        assert answer.status == 408
        assert answer.body == b"request headers not complete within the header timeout of 0.2 s"
        assert await connection.rest() == b""


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer():
    async with serving(APP, HTTPOptions(header_timeout=0.2)) as port:
        connection = await connect(port)
        assert await connection.rest() == b""


async def test_a_slow_body_is_not_cut_by_the_header_timeout():
    async with serving(APP, HTTPOptions(header_timeout=0.2)) as port:
        connection = await connect(port)
        await connection.send(b"POST /length HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            await connection.send(chunk(b"x" * 10))
            await asyncio.sleep(0.15)  # pacing a slow client (not ordering events): past the header timeout
        await connection.send(b"0\r\n\r\n")
        answer = await connection.answer()
        assert (answer.status, answer.body) == (200, b"30")
        connection.close()


BODY_TIMEOUT_ANSWER = (b"request body not received within the body timeout of 0.2 s (--http-body-timeout),"
                       b" extended by a second per 500 bytes received")


async def test_a_body_that_stops_coming_gets_408_at_the_body_timeout_and_the_connection_closes():
    async with serving(APP, HTTPOptions(body_timeout=0.2)) as port:
        connection = await connect(port)
        await connection.send(b"POST /length HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        answer = await connection.answer()
        assert (answer.status, answer.headers["connection"], answer.body) == (408, "close", BODY_TIMEOUT_ANSWER)
        assert await connection.rest() == b""


async def test_the_body_timeout_restarts_with_each_request_on_a_kept_alive_connection():
    async with serving(APP, HTTPOptions(body_timeout=0.2)) as port:
        connection = await connect(port)
        await connection.send(request("POST", "/length", body=b"abc"))
        assert (await connection.answer()).body == b"3"
        await connection.send(b"POST /length HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"x"))
        answer = await connection.answer()
        assert (answer.status, answer.body) == (408, BODY_TIMEOUT_ANSWER)


async def test_a_large_body_the_app_reads_late_is_read_whole():
    async with serving(APP, HTTPOptions(body_timeout=0.2)) as port:
        body = b"x" * (4 * MiB)  # more than uvicorn buffers: reading pauses until the app reads
        answer = await exchange(port, request("POST", "/late", body=body))
        assert (answer.status, answer.body) == (200, str(len(body)).encode())


async def test_requests_past_the_connection_cap_get_503_until_a_connection_closes():
    async with serving(APP, HTTPOptions(max_connections=3)) as port:
        held = []
        for _ in range(3):
            connection = await connect(port)
            await connection.send(request("GET", "/live"))
            assert (await connection.answer()).status == 200  # kept alive: the connection counts
            held.append(connection)
        answer = await exchange(port, request("GET", "/live"))
        assert answer.status == 503 and answer.headers["connection"] == "close"
        held.pop().close()
        for _ in range(100):  # the server notices the close in its own time
            if (answer := await exchange(port, request("GET", "/live"))).status == 200:
                break
        assert answer.status == 200
        for connection in held:
            connection.close()


async def test_a_little_of_a_body_nobody_read_is_drained_and_the_connection_kept():
    async with serving(APP) as port:
        connection = await connect(port)
        await connection.send(request("POST", "/early", body=b"x" * 1000))
        assert (await connection.answer()).status == 400
        await connection.send(request("GET", "/live"))
        assert (await connection.answer()).body == b"live"
        connection.close()


async def test_a_large_body_nobody_reads_closes_the_connection_once_the_drain_is_spent():
    async with serving(APP) as port:
        connection = await connect(port)
        await connection.send(request("POST", "/early", {"Content-Length": str(1 << 30)}))
        assert (await connection.answer()).status == 400  # answered before any of the body was sent
        sent = 0
        with contextlib.suppress(ConnectionError, OSError):
            while sent < 1 << 30:
                await connection.send(b"x" * 65536)
                sent += 65536
        # the server read DRAIN_BYTES more and closed; the rest of the GiB was never sent
        assert DRAIN_BYTES < sent < 64 * MiB  # (what the two sockets' buffers took counts as sent)
        assert await connection.rest() == b""
        connection.close()


async def test_access_lines_for_every_request_and_none_when_switched_off(caplog):
    caplog.set_level(logging.INFO, "triserve.access")
    async with serving(APP) as port:
        await exchange(port, request("GET", "/live"))
    async with serving(APP, HTTPOptions(access_log=False)) as port:
        await exchange(port, request("GET", "/live"))
    assert [(r.path, r.status) for r in caplog.records if r.name == "triserve.access"] == [("/live", 200)]


# -- parsing in turns, on the protocol object itself (deterministic: no socket decides the chunks)
class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def received_chunks(data: bytes) -> list[int]:
    """The body chunks an app receives when the connection gets `data` in one read."""
    import uvicorn
    from uvicorn.server import ServerState

    from triserve.protocols.transport.http import LimitedHttpTools

    sizes: list[int] = []
    done = asyncio.Event()

    async def app(scope, receive, send) -> None:
        more = True
        while more:
            message = await receive()
            sizes.append(len(message.get("body", b"")))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        done.set()

    config = uvicorn.Config(app, lifespan="off", log_config=None)
    protocol = LimitedHttpTools(config=config, server_state=ServerState(), app_state={},
                                _loop=asyncio.get_running_loop(), limits=HTTPOptions())
    protocol.connection_made(Transport())
    protocol.data_received(data)
    async with asyncio.timeout(60):
        await done.wait()
    return [size for size in sizes if size]


async def test_a_body_of_known_length_is_parsed_in_one_turn_after_its_headers():
    body = b"x" * MiB
    sizes = await received_chunks(request("POST", "/length", body=body))
    assert sum(sizes) == MiB
    assert len(sizes) <= 2  # the first turn (headers, and the start of the body), then the rest at once


async def test_a_chunked_body_is_parsed_a_bounded_slice_per_turn():
    body = b"x" * MiB
    head = b"POST /length HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    sizes = await received_chunks(head + chunk(body) + b"0\r\n\r\n")
    assert sum(sizes) == MiB
    assert len(sizes) >= MiB // FEED_BYTES  # no length known up front: FEED_BYTES a turn
