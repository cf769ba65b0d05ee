"""A grpc.aio server on the shared event loop, with raised message limits and the standard
grpc.health.v1 service answering SERVING while the server is ready."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from triserve.errors import Code
from triserve.options import DEFAULT_GRPC_MAX_MESSAGE_BYTES
GRACE_SECONDS = 30  # as long as the HTTP front end waits for in-flight requests
HEALTH_REFRESH_SECONDS = 1.0

# Triton's GrpcStatusUtil::CodeToStatus.
GRPC_STATUS = {
    Code.INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
    Code.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
}

# register(server) adds the servicers and returns their full service names (for health checks).
Register = Callable[[grpc.aio.Server], list[str]]


class ReadinessHealth(HealthServicer):
    """grpc.health.v1 where "" and every served service follow the server's readiness."""

    def __init__(self, ready: Callable[[], bool], services: list[str]) -> None:
        super().__init__()
        self._ready = ready
        self._services = ["", *services]

    async def refresh(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self._ready() else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self._services:
            await self.set(service, status)

    async def Check(self, request, context):
        await self.refresh()  # readiness changes with model loads; answer what holds now
        return await super().Check(request, context)


class GRPCFrontEnd:
    def __init__(
        self,
        register: Register,
        host: str,
        port: int,
        ready: Callable[[], bool],
        max_message_bytes: int = DEFAULT_GRPC_MAX_MESSAGE_BYTES,
    ) -> None:
        self.register = register
        self.address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        self.ready = ready
        self.max_message_bytes = max_message_bytes
        self.server: grpc.aio.Server | None = None
        self.health: ReadinessHealth | None = None
        self._refresher: asyncio.Task | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared silently
            ]
        )
        services = self.register(self.server)
        self.health = ReadinessHealth(self.ready, services)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        try:
            self.server.add_insecure_port(self.address)
        except RuntimeError as e:
            raise OSError(f"could not listen on {self.address}: {e}") from None
        await self.server.start()
        await self.health.refresh()
        self._refresher = asyncio.create_task(self._refresh_health())

    async def _refresh_health(self) -> None:
        """Keeps Watch streams current; Check reads readiness itself."""
        while True:
            await asyncio.sleep(HEALTH_REFRESH_SECONDS)
            await self.health.refresh()

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.server is not None:
            # New calls are refused; calls in flight get the grace period to finish.
            await self.server.stop(GRACE_SECONDS)
