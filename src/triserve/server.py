"""Run the front ends around one data plane in a single event loop."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from typing import Protocol

from triserve.core.catalog import Catalog
from triserve.core.dataplane import DataPlane
from triserve.core.manager import ModelManager
from triserve.errors import ServerError
from triserve.options import FRONTENDS, ServerOptions

log = logging.getLogger("triserve")

# Every front end's builder, "module:function", called as builder(dataplane, options, port).
BUILDERS: dict[str, str] = {
    "http": "triserve.protocols.kserve.rest:frontend",
    "grpc": "triserve.protocols.kserve.grpc:frontend",
    "metrics": "triserve.protocols.kserve.metrics:frontend",
    "tfserving_grpc": "triserve.protocols.tfserving.grpc:frontend",
    "tfserving_rest": "triserve.protocols.tfserving.rest:frontend",
    "torchserve_inference": "triserve.protocols.torchserve.inference:frontend",
    "torchserve_management": "triserve.protocols.torchserve.management:frontend",
    "torchserve_metrics": "triserve.protocols.torchserve.metrics:frontend",
}


class FrontEnd(Protocol):
    """A running front end: started by start(), stopped gracefully by stop()."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_dataplane(options: ServerOptions) -> DataPlane:
    """The model sources the options name, behind one data plane."""
    from triserve.repository.mar import from_options
    from triserve.repository.tfserving import DEFAULT_MODEL_NAME, TFServingModels
    from triserve.repository.triton import TritonRepositories
    from triserve.repository.uploads import UploadedModels

    catalogs: list[Catalog] = []
    if options.model_repositories:
        catalogs.append(TritonRepositories(list(options.model_repositories)))
    tfserving = options.tfserving
    if tfserving.model_name and not tfserving.base_path:
        raise ServerError("--model-name needs --model-base-path")
    models_conf = None
    if tfserving.enabled:
        models_conf = TFServingModels(
            config_file=tfserving.config_file,
            model_name=tfserving.model_name or DEFAULT_MODEL_NAME,
            base_path=tfserving.base_path,
            fs_poll_seconds=tfserving.fs_poll_seconds,
            config_poll_seconds=tfserving.config_poll_seconds,
        )
        catalogs.append(models_conf)
    archives = from_options(options.archives)  # TorchServe archives (--model-store, --models)
    if archives is not None:
        catalogs.append(archives)
    manager = ModelManager(
        catalogs,
        control_mode=options.model_control_mode,
        uploads=UploadedModels(),
        allow_custom_code=options.archives.allow_custom_handlers,
    )
    return DataPlane(manager, options.kserve.strict_readiness, registry=archives, configurable=models_conf)


class Server:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.dataplane = build_dataplane(options)
        self.manager = self.dataplane.manager
        self.frontends: list[tuple[str, int, FrontEnd]] = []
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> int:
        failed = await self.manager.start(list(self.options.load_models))
        if failed and self.options.exit_on_error:
            log.error("exiting: model(s) failed to load: %s (--exit-on-error)", ", ".join(failed))
            await self.manager.close()
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        code = 0
        try:
            for name, (_, title) in FRONTENDS.items():
                port = self.options.ports.get(name, 0)
                if port == 0:
                    continue  # port 0 switches a front end off
                module, _, function = BUILDERS[name].partition(":")
                frontend = getattr(importlib.import_module(module), function)(self.dataplane, self.options, port)
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
                poller = asyncio.create_task(self.manager.poll_forever(self.options.repository_poll_secs))
            # Sources that watch themselves (TF Serving's file system poll) at their own pace.
            pollers = [
                asyncio.create_task(self.manager.poll_forever(c.poll_seconds, [c]))
                for c in self.manager.catalogs
                if c.poll_seconds > 0
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
    from triserve import logs

    logs.configure(options.log_level, options.log_format)
    import uvloop

    from triserve.core.memory import limit_arenas

    limit_arenas()
    try:
        server = Server(options)
    except ServerError as e:  # a model source that cannot be read at all (e.g. a broken models.conf)
        log.error("could not start: %s", e.message)
        return 1
    return uvloop.run(server.run())
