"""Run the front ends around one model manager in a single event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from triserve.core.manager import ModelManager
from triserve.repository.catalog import Catalog, TritonRepositories

log = logging.getLogger("triserve")


@dataclass
class ServerOptions:
    model_repositories: list[Path] = field(default_factory=list)
    host: str = "127.0.0.1"
    http_port: int = 8000
    exit_on_error: bool = False
    strict_readiness: bool = True
    log_level: str = "info"


class _Uvicorn(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us: several run in one loop."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def build_catalogs(options: ServerOptions) -> list[Catalog]:
    catalogs: list[Catalog] = []
    if options.model_repositories:
        catalogs.append(TritonRepositories(options.model_repositories))
    return catalogs


class Server:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.manager = ModelManager(build_catalogs(options))
        self._servers: list[tuple[str, _Uvicorn]] = []
        self._stopping = asyncio.Event()

    def _http_server(self, name: str, app, port: int) -> None:
        if port == 0:
            return  # port 0 switches a front end off
        config = uvicorn.Config(
            app,
            host=self.options.host,
            port=port,
            loop="none",
            http="httptools",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=30,
        )
        self._servers.append((name, _Uvicorn(config)))

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> int:
        from triserve.protocols.v2_http import V2HTTP

        failed = await self.manager.load_all()
        if failed and self.options.exit_on_error:
            log.error("exiting: model(s) failed to load: %s (--exit-on-error)", ", ".join(failed))
            await self.manager.close()
            return 1
        self._http_server("HTTP (KServe v2)", V2HTTP(self.manager).app(), self.options.http_port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        tasks = [asyncio.create_task(server.serve()) for _, server in self._servers]
        while not all(server.started for _, server in self._servers):
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.01)
        failed_start = [name for (name, server), t in zip(self._servers, tasks) if t.done() and not server.started]
        if failed_start:
            log.error("could not start: %s", ", ".join(failed_start))
            self.stop()
        else:
            urls = ", ".join(f"{name} on {self.options.host}:{s.config.port}" for name, s in self._servers)
            log.info("triserve ready: %s", urls)
        await self._stopping.wait()
        log.info("shutting down: finishing in-flight requests")
        for _, server in self._servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.manager.close()
        return 1 if failed_start else 0


def serve(options: ServerOptions) -> int:
    logging.basicConfig(
        level=options.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvloop

    return uvloop.run(Server(options).run())
