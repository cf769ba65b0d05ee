"""HTTP front ends: an ASGI app served by uvicorn on the shared event loop, request bodies
read as JSON objects, and work cancelled when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, TypeVar

import orjson
import uvicorn
from starlette.requests import Request

from triserve.errors import Code, ServerError, invalid

T = TypeVar("T")


class _Uvicorn(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us: several run in one loop."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HTTPFrontEnd:
    """An ASGI app served by uvicorn (httptools parser) on the shared event loop."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="none",
            http="httptools",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=30,
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


def json_object(data: bytes, what: str = "the request JSON") -> dict[str, Any]:
    """A body that must be a JSON object, or a 400 saying why not."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise invalid(f"failed to parse {what}: {e}") from None
    if not isinstance(value, dict):
        raise invalid(f"{what} must be an object")
    return value


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
