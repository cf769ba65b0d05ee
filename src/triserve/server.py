"""Run the front ends around one model manager in a single event loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import uvicorn

from triserve.core.manager import ModelManager
from triserve.repository.catalog import Catalog, TritonRepositories

log = logging.getLogger("triserve")

# Every front end: name -> (default port, "module:function" building it, what the log calls it).
# The builder is called as builder(server: Server, port: int) and returns a FrontEnd.
FRONTENDS: dict[str, tuple[int, str, str]] = {
    "http": (8000, "triserve.protocols.v2_http:frontend", "KServe v2 HTTP"),
}


@dataclass
class ServerOptions:
    model_repositories: list[Path] = field(default_factory=list)
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: {name: spec[0] for name, spec in FRONTENDS.items()})
    model_control_mode: str = "none"
    exit_on_error: bool = False
    strict_readiness: bool = True
    log_level: str = "info"
    # Options of the other model sources and front ends, by name (see cli.py).
    extra: dict[str, Any] = field(default_factory=dict)


class FrontEnd(Protocol):
    """A running front end: started by start(), stopped gracefully by stop()."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


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
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"could not listen on port {self.server.config.port}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def build_catalogs(options: ServerOptions) -> list[Catalog]:
    catalogs: list[Catalog] = []
    if options.model_repositories:
        catalogs.append(TritonRepositories(options.model_repositories))
    return catalogs


class Server:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.manager = ModelManager(build_catalogs(options), control_mode=options.model_control_mode)
        self.frontends: list[tuple[str, int, FrontEnd]] = []
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> int:
        failed = await self.manager.load_all()
        if failed and self.options.exit_on_error:
            log.error("exiting: model(s) failed to load: %s (--exit-on-error)", ", ".join(failed))
            await self.manager.close()
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        code = 0
        try:
            for name, (_, target, title) in FRONTENDS.items():
                port = self.options.ports.get(name, 0)
                if port == 0:
                    continue  # port 0 switches a front end off
                module, _, function = target.partition(":")
                frontend = getattr(importlib.import_module(module), function)(self, port)
                await frontend.start()
                self.frontends.append((title, port, frontend))
        except OSError as e:
            log.error("could not start: %s", e)
            code = 1
        else:
            urls = ", ".join(f"{title} on {self.options.host}:{port}" for title, port, _ in self.frontends)
            log.info("triserve ready: %s", urls)
            await self._stopping.wait()
            log.info("shutting down: finishing in-flight requests")
        await asyncio.gather(*(f.stop() for _, _, f in self.frontends), return_exceptions=True)
        await self.manager.close()
        return code


def serve(options: ServerOptions) -> int:
    logging.basicConfig(
        level=options.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvloop

    return uvloop.run(Server(options).run())
