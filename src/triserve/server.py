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
from triserve.errors import ServerError
from triserve.repository.catalog import Catalog, TritonRepositories

log = logging.getLogger("triserve")

# Every front end: name -> (default port, "module:function" building it, what the log calls it).
# The builder is called as builder(server: Server, port: int) and returns a FrontEnd.
FRONTENDS: dict[str, tuple[int, str, str]] = {
    "http": (8000, "triserve.protocols.v2_http:frontend", "KServe v2 HTTP"),
    "grpc": (8001, "triserve.protocols.v2_grpc:frontend", "KServe v2 gRPC"),
    "metrics": (8002, "triserve.protocols.triton_metrics:frontend", "Triton metrics"),
    "tfserving_grpc": (8500, "triserve.protocols.tfserving_grpc:frontend", "TF Serving gRPC"),
    "tfserving_rest": (8501, "triserve.protocols.tfserving_rest:frontend", "TF Serving REST"),
    "torchserve_inference": (8080, "triserve.protocols.torchserve:frontend", "TorchServe inference"),
    "torchserve_management": (8081, "triserve.protocols.torchserve_management:frontend", "TorchServe management"),
    "torchserve_metrics": (8082, "triserve.protocols.torchserve_metrics:frontend", "TorchServe metrics"),
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
    extra = options.extra
    if extra.get("model_name") and not extra.get("model_base_path"):
        raise ServerError("--model-name needs --model-base-path")
    if extra.get("model_config_file") or extra.get("model_base_path"):
        from triserve.repository.tfserving import DEFAULT_MODEL_NAME, TFServingModels

        catalogs.append(
            TFServingModels(
                config_file=Path(extra["model_config_file"]) if extra.get("model_config_file") else None,
                model_name=extra.get("model_name") or DEFAULT_MODEL_NAME,
                base_path=Path(extra["model_base_path"]) if extra.get("model_base_path") else None,
                fs_poll_seconds=extra.get("file_system_poll_wait_seconds", 1.0),
                config_poll_seconds=extra.get("model_config_file_poll_wait_seconds", 0.0),
            )
        )
    if extra.get("model_store") or extra.get("models"):
        from triserve.repository.mar import from_options

        catalogs.append(from_options(extra))  # TorchServe archives (--model-store, --models)
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
        failed = await self.manager.start(self.options.extra.get("load_model") or [])
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
            poller = None
            if self.options.model_control_mode == "poll":
                poller = asyncio.create_task(self.manager.poll_forever(self.options.extra.get("repository_poll_secs", 15)))
            # Sources that watch themselves (TF Serving's file system poll) at their own pace.
            pollers = [
                asyncio.create_task(self.manager.poll_forever(c.poll_seconds, [c]))
                for c in self.manager.catalogs
                if getattr(c, "poll_seconds", 0) > 0
            ]
            await self._stopping.wait()
            if poller is not None:
                poller.cancel()
            for task in pollers:
                task.cancel()
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

    from triserve.core.memory import limit_arenas

    limit_arenas()
    try:
        server = Server(options)
    except ServerError as e:  # a model source that cannot be read at all (e.g. a broken models.conf)
        log.error("could not start: %s", e.message)
        return 1
    return uvloop.run(server.run())
