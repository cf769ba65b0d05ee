"""HTTP front ends: an ASGI app served by uvicorn on the shared event loop, with limits on what
a connection may send, a request log, and work cancelled when the client goes away.

uvicorn's httptools protocol limits neither headers nor how long they take; `LimitedHttpTools`
adds that: more header fields or bytes than allowed get 431 (counted as they arrive, so an
endless header is cut off at the limit, not buffered), a connection whose request headers are
not complete within the header timeout is closed (408 when part of a request came), a body
that trickles in (not complete within the body timeout, extended by a second per BODY_MIN_RATE
bytes received, as Apache's mod_reqtimeout does) gets 408 and its connection closed, and a body
nobody reads any more (the answer went out first) is drained a little, then the connection
closed. A refused connection closes gracefully: the answer, then end-of-stream, then what the
client still sends is dropped for a moment (closing at once would reset the connection, and
most clients would lose the answer). Received bytes are parsed FEED_BYTES per turn of the event
loop, so a flood of one-byte chunks (a Python call each) cannot hold the loop for long; the
rest of a body whose Content-Length is known goes in one turn on top (the parser hands a body's
bytes over in one call, however many), so a large tensor is not read in dozens of turns. The
connection cap is uvicorn's `limit_concurrency` (503 beyond it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from typing import Any, Awaitable, Callable, TypeVar

import uvicorn
from starlette.requests import Request
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from triserve.errors import Code, ServerError
from triserve.options import HTTPOptions
from triserve.protocols.transport.access import AccessLog

T = TypeVar("T")
DRAIN_BYTES = 1 << 20  # bytes read and dropped after an early answer before the connection is closed
FEED_BYTES = 1 << 15  # bytes parsed per turn of the event loop, besides the known rest of a body
LINGER_SECONDS = 2.0  # how long a refused connection stays half-open, so that the client reads the answer
BODY_MIN_RATE = 500  # bytes a second a slow body must keep up, past the body timeout (Apache's MinRate)


def _plain(status: int, message: str) -> list[bytes]:
    body = message.encode()
    return [
        STATUS_LINE[status],
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
        body,
    ]


def _answer(status: int, message: str) -> Callable[..., Awaitable[None]]:
    """An ASGI app that answers every request with `status` and closes the connection."""
    body = message.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class LimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, a header timeout, parsing in bounded
    turns and a bounded drain."""

    def __init__(self, *args: Any, limits: HTTPOptions, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._timer: asyncio.TimerHandle | None = None
        self._in_headers = True  # between a request's first byte (or the connection) and its last header
        self._received = 0  # raw bytes received while in headers
        self._fields = 0
        self._size = 0  # request line and header fields, as parsed
        self._content_length: int | None = None  # the request's Content-Length header, when it has one
        self._body_left = 0  # bytes of the request's body still to parse, as its Content-Length says
        self._dropped = 0  # bytes that came after the answer
        self._lingering = False  # refused: only dropping what still comes, until closed
        self._backlog: collections.deque[memoryview] = collections.deque()  # received, not parsed yet
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_deadline = 0.0  # loop time by which the body must be complete (moves with what arrives)

    # -- the header timeout ----------------------------------------------------------------
    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self.limits.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a pipelined request waits behind an answer in progress: not the client's fault
            return
        if self._received:
            self._refuse(408, f"request headers not complete within the header timeout of {self.limits.header_timeout:g} s")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer, end the stream and drop what follows (or, behind an answer still being written,
        close once it is out)."""
        self._lingering, self._dropped = True, 0
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self.transport.write(b"".join(_plain(status, message)))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._disarm()
        self._timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_body_timer()
        super().connection_lost(exc)

    # -- parsing in bounded turns ------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._backlog:  # earlier bytes still wait their turn: these go after them
            self._backlog.append(memoryview(data))
            self.transport.pause_reading()
            return
        self._feed(memoryview(data))

    def _feed(self, data: memoryview) -> None:
        """Parse a turn's worth of `data`; the rest waits for the next turn of the event loop,
        socket reads paused meanwhile (a flood of one-byte chunks costs a Python call each)."""
        turn = FEED_BYTES + (0 if self._in_headers else self._body_left)
        self._parse(data[:turn])
        rest = data[turn:]
        if rest and not self.transport.is_closing():
            self._backlog.appendleft(rest)
            self.transport.pause_reading()
            self.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        if self.transport.is_closing() or self.parser is None:
            self._backlog.clear()
            return
        self._feed(self._backlog.popleft())
        if not self._backlog and not self.transport.is_closing() and not self.flow.read_paused:
            self.transport.resume_reading()  # unless uvicorn paused reading itself (an app slow to read)

    def _parse(self, data: memoryview) -> None:
        if self._lingering:
            self._drop(len(data))
            return
        if self._in_headers:
            self._received += len(data)
            self._arm()  # the first byte of a request on a kept-alive connection
        super().data_received(data)  # type: ignore[arg-type]  # httptools reads any buffer
        if self._in_headers and self._received > self.limits.max_header_size and not self.transport.is_closing():
            self._refuse(431, self._too_large())  # headers not complete past the limit: answer now, buffer no more

    # -- header limits ---------------------------------------------------------------------
    def _too_large(self) -> str:
        return (f"request header fields too large: more than {self.limits.max_header_size} bytes"
                " (--http-max-header-size)")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._fields, self._size, self._dropped = 0, 0, 0
        self._content_length, self._body_left = None, 0

    def on_url(self, url: bytes) -> None:
        self._size += len(url)
        if self._size <= self.limits.max_header_size:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._size += len(name) + len(value) + 4
        if name.lower() == b"content-length" and value.strip().isdigit():
            self._content_length = int(value)  # the parser refuses a second, different one
        if self._fields <= self.limits.max_headers and self._size <= self.limits.max_header_size:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_headers = False
        self._body_left = self._content_length or 0
        if self._fields > self.limits.max_headers:
            refusal = f"too many header fields: {self._fields}, at most {self.limits.max_headers} (--http-max-headers)"
        elif self._size > self.limits.max_header_size:
            refusal = self._too_large()
        else:
            super().on_headers_complete()
            if not self.parser.should_upgrade() and self.cycle is not None and not self.cycle.response_complete:
                self._start_body_timer()
            return
        if self._size > self.limits.max_header_size:
            self.url = b"/"  # what was kept of it may not parse
        app, self.app = self.app, _answer(431, refusal)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._stop_body_timer()
        super().on_message_complete()
        self._in_headers, self._received = True, 0

    # -- bodies nobody reads ---------------------------------------------------------------
    def on_body(self, body: bytes) -> None:
        self._body_deadline += len(body) / BODY_MIN_RATE
        self._body_left = max(self._body_left - len(body), 0)
        if self.cycle is not None and self.cycle.response_complete:
            self._drop(len(body))  # answered already; the rest of this body is worth little reading
            return
        super().on_body(body)

    # -- the body timeout --------------------------------------------------------------------
    def _start_body_timer(self) -> None:
        self._stop_body_timer()
        self._body_deadline = self.loop.time() + self.limits.body_timeout
        self._body_timer = self.loop.call_at(self._body_deadline, self._body_check)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or self._backlog:
            # not the client's fault: the app reads slowly, or received bytes wait their turn
            self._body_deadline = max(self._body_deadline, now + self.limits.body_timeout)
        if now < self._body_deadline:
            self._body_timer = self.loop.call_at(self._body_deadline, self._body_check)
            return
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            self.transport.close()  # an answer is (partly) out: nothing more can be said on this connection
        else:
            self._lingering, self._dropped = True, 0
            self.transport.write(b"".join(_plain(
                408, f"request body not received within the body timeout of {self.limits.body_timeout:g} s"
                     f" (--http-body-timeout), extended by a second per {BODY_MIN_RATE} bytes received")))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._disarm()
            self._timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        if cycle is not None:
            cycle.disconnected = True  # the app reading the body sees the client gone; its answer goes nowhere
            cycle.message_event.set()

    def _drop(self, size: int) -> None:
        self._dropped += size
        if self._dropped > DRAIN_BYTES and not self.transport.is_closing():
            self.transport.close()


class _Uvicorn(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us: several run in one loop."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HTTPFrontEnd:
    """An ASGI app served by uvicorn (httptools parser) on the shared event loop."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        options: HTTPOptions = HTTPOptions(),
        model_of: Callable[[dict[str, Any]], str] | None = None,
    ) -> None:
        """`model_of(scope)`: the model a request names, for the access log (default: the
        route's `model` path parameter)."""
        if options.access_log:
            app = AccessLog(app, model_of)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="none",
            http=functools.partial(LimitedHttpTools, limits=options),  # type: ignore[arg-type]
            ws="none",
            lifespan="off",
            log_config=None,  # uvicorn's records go to the server's handlers and format
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=30,
            limit_concurrency=options.max_connections + 1,  # uvicorn counts the new connection too
        )
        self.server = _Uvicorn(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"could not listen on port {self.server.config.port}")
            await asyncio.sleep(0.01)

    async def _serve(self) -> None:
        try:
            await self.server.serve()
        except SystemExit:  # uvicorn exits when it cannot listen; that must not end the event loop
            raise OSError(f"could not listen on port {self.server.config.port}") from None

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client goes away (a queued request is then dropped)."""
    task = asyncio.ensure_future(work)
    receive = request.receive

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ServerError("client disconnected; request dropped", Code.UNAVAILABLE)
    return task.result()
