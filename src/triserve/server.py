"""Run the front ends around one data plane in a single event loop."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from typing import Protocol

from triserve import shared_listener
from triserve.core.catalog import Catalog
from triserve.core.dataplane import DataPlane
from triserve.core.manager import ModelManager
from triserve.core.warmup import BatchCalibration, default_cache_dir
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
    "torchserve_grpc_inference": "triserve.protocols.torchserve.grpc:inference_frontend",
    "torchserve_grpc_management": "triserve.protocols.torchserve.grpc:management_frontend",
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
    if tfserving.model_name and not tfserving.base_path and not options.model_repositories and not options.archives.enabled:
        # (with a --model-repository, --model-name names a bare model there and is otherwise unused)
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
        calibration=BatchCalibration(options.batch_calibration, default_cache_dir()),
    )
    return DataPlane(manager, options.kserve.strict_readiness, registry=archives, configurable=models_conf)


class Server:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.dataplane = build_dataplane(options)
        self.manager = self.dataplane.manager
        self.frontends: list[tuple[str, int, FrontEnd]] = []
        self.console = None  # the web console and API docs, on the v2 HTTP port (console.Console)
        self._stopping = asyncio.Event()
        self.forced = False  # the grace period ended with models still busy: exit without waiting for them

    def stop(self) -> None:
        self.dataplane.serving = False  # readiness answers 503 at once, while in-flight requests finish
        self._stopping.set()

    def _startup_models(self) -> list[str]:
        """What explicit mode loads at start: --load-model's models, and the archives --models
        named (TorchServe loads those at start whatever else is asked). Other modes load all."""
        names = list(self.options.load_models)
        if self.options.model_control_mode == "explicit" and self.dataplane.registry is not None and "*" not in names:
            names += [n for n in self.dataplane.registry.names() if n not in names]
        return names

    def _build(self, name: str, port: int) -> FrontEnd:
        module, _, function = BUILDERS[name].partition(":")
        builder = getattr(importlib.import_module(module), function)
        if name == "http":  # the web console shares the v2 HTTP port
            from triserve.console import Console

            self.console = Console(self.dataplane, self.options.ports, self.options.http.max_input_size)
            self.console.sampler.start()  # the traffic history, from the start
            return builder(self.dataplane, self.options, port, extra_routes=self.console.routes())
        frontend = builder(self.dataplane, self.options, port)
        if self.console is not None:
            self.console.add_api(name, frontend)  # its OpenAPI document, served on the v2 port
        return frontend

    def _listening(self) -> list[tuple[str, str, int]]:
        titles = {title: name for name, (_, title) in FRONTENDS.items()}
        return [(titles[title.split(" and ")[0]], title, port) for title, port, _ in self.frontends]

    def _reason(self, name: str) -> str:
        entry = self.manager.entries.get(name)
        if entry is None:
            return "no model source has a model of that name"
        return entry.reason or "failed to load"

    def _models_summary(self, failed: list[str]) -> tuple[str, bool]:
        """The ready line's account of the models: all ready, or which failed and why."""
        asked = {n for n, entry in self.manager.entries.items() if entry.state} | set(failed)
        if not failed:
            if not asked:
                return "no models loaded" + (" (explicit mode: load them with the repository API)"
                                             if self.options.model_control_mode == "explicit" else ""), True
            return f"all {len(asked)} model{'s' if len(asked) != 1 else ''} ready", True
        reasons = "; ".join(f"{n}: {self._reason(n)}" for n in failed)
        readiness = (" (/v2/health/ready answers 503 until they load: --strict-readiness)"
                     if self.options.kserve.strict_readiness else "")
        return f"{len(failed)} of {len(asked)} models failed to load{readiness}: {reasons}", False

    def _graceful(self, frontend: FrontEnd) -> FrontEnd:
        """`frontend`, giving its in-flight requests --exit-timeout-secs to finish on stop()."""
        grace = self.options.exit_timeout_secs
        for part in (frontend, getattr(frontend, "http", None)):  # TorchServe metrics wraps an HTTP front end
            if hasattr(part, "grace"):
                part.grace = grace  # gRPC
            config = getattr(getattr(part, "server", None), "config", None)
            if hasattr(config, "timeout_graceful_shutdown"):
                config.timeout_graceful_shutdown = grace  # uvicorn
        return frontend

    def _planned(self) -> list[tuple[str, int, list[str]]]:
        """(title, port, the front ends served together there) for every listener to start."""
        if self.options.single_port:
            planned = [(self.options.single_port, list(shared_listener.SINGLE_PORT_HTTP))]
            if self.options.ports.get("grpc", 0):
                planned.append((self.options.ports["grpc"], list(shared_listener.SINGLE_PORT_GRPC)))
            planned += [(self.options.ports.get(n, 0), [n]) for n in shared_listener.SINGLE_PORT_APART]
        else:
            shared = shared_listener.groups(self.options)  # TorchServe APIs on one address: one listener
            planned = [(self.options.ports.get(name, 0), [name, *shared.get(name, [])]) for name in FRONTENDS
                       if not any(name in others for others in shared.values())]
        # port 0 switches a front end off
        return [(" and ".join(FRONTENDS[n][1] for n in names), port, names) for port, names in planned if port]

    async def _start_frontends(self) -> int:
        try:
            for title, port, names in self._planned():
                together = {name: self._build(name, port) for name in names}
                if self.options.single_port and len(names) > 1:
                    frontend = (shared_listener.single_http(self.options, together) if names[0] == "http"
                                else shared_listener.single_grpc(self.options, port, together))
                elif len(names) > 1:
                    frontend = shared_listener.combine(self.options, port, together)
                else:
                    frontend = together[names[0]]
                await self._graceful(frontend).start()
                self.frontends.append((title, port, frontend))
        except OSError as e:
            log.error("could not start: %s", e)
            return 1
        return 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        code = 0
        if self.options.single_port:
            # KServe and Knative probe while models load: listen first, ready (200) only once they are.
            self.dataplane.serving = False
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
            code = await self._start_frontends()
        failed: list[str] = []
        if code == 0:
            failed = await self.manager.start(self._startup_models())
        if failed and self.options.exit_on_error:
            log.error("exiting: model(s) failed to load: %s (--exit-on-error)", ", ".join(failed))
            await asyncio.gather(*(f.stop() for _, _, f in self.frontends), return_exceptions=True)
            await self.manager.close()
            return 1
        if not self.options.single_port:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
            # Ready (200) only once every front end listens: a client that saw HTTP ready may call gRPC next.
            self.dataplane.serving = False
            code = await self._start_frontends()
        if not self._stopping.is_set():
            self.dataplane.serving = True
        if code == 0:
            urls = ", ".join(f"{title} on {self.options.host_of(n)}:{port}" for n, title, port in self._listening())
            summary, all_ready = self._models_summary(failed)
            (log.info if all_ready else log.warning)("triserve ready: %s; %s", urls, summary)
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
        deadline = loop.time() + self.options.exit_timeout_secs
        await asyncio.gather(*(f.stop() for _, _, f in self.frontends), return_exceptions=True)
        if self.console is not None:
            await self.console.sampler.stop()
        try:  # what the front ends left of the grace period (a model still executing may not end)
            await asyncio.wait_for(self.manager.close(), max(deadline - loop.time(), 1.0))
        except TimeoutError:
            log.warning("models still busy after --exit-timeout-secs (%gs): exiting without them",
                        self.options.exit_timeout_secs)
            self.forced = True
        return code


def serve(options: ServerOptions) -> int:
    from triserve import logs

    logs.configure_runtime(options.log_level, options.log_format, options.log_file)
    import uvloop

    from triserve.core.memory import limit_arenas

    limit_arenas()
    try:
        server = Server(options)
    except ServerError as e:  # a model source that cannot be read at all (e.g. a broken models.conf)
        log.error("could not start: %s", e.message)
        return 1
    code = uvloop.run(server.run())
    if server.forced:  # threads still inside a model would keep the interpreter from exiting
        import os

        logging.shutdown()
        os._exit(code)
    return code
