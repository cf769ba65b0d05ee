"""Triton's logging extension: /v2/logging and gRPC LogSettings read and change the running
server's log settings, and what is logged follows them."""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator, Iterator

import grpc
import httpx
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port
from triserve import logs
from triserve.core.dataplane import DataPlane
from triserve.options import ServerOptions
from triserve.protocols.kserve import grpc as v2grpc
from triserve.protocols.kserve.rest import V2HTTP


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(logs.TEXT_FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def settings() -> Iterator[tuple[logs.Settings, Collect]]:
    """Settings of their own over a handler of their own on a logger of its own; the root level,
    which the settings set, is put back."""
    root_level = logging.getLogger().level
    handler = Collect()
    logger = logging.getLogger("triserve.test-logging")
    logger.addHandler(handler)
    logger.propagate = False
    own = logs.Settings()
    own.attach(handler)
    own.start("info")
    try:
        yield own, handler
    finally:
        logger.removeHandler(handler)
        logging.getLogger().setLevel(root_level)


@contextlib.asynccontextmanager
async def http_client(dataplane: DataPlane, own: logs.Settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=V2HTTP(dataplane, log_settings=own).app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.mark.anyio
async def test_http_logging_settings_change_what_the_server_logs(dataplane, settings):
    own, handler = settings
    logger = logging.getLogger("triserve.test-logging")
    async with http_client(dataplane, own) as client:
        assert (await client.get("/v2/logging")).json() == {
            "log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
            "log_format": "default",
        }
        logger.debug("hidden: no verbose logging yet")
        response = await client.post("/v2/logging", json={"log_verbose_level": 1, "log_info": False})
        assert response.json()["log_verbose_level"] == 1 and response.json()["log_info"] is False
        logger.debug("a verbose line")
        logger.info("hidden: info is off")
        logger.warning("a warning")
        response = await client.post("/v2/logging", json={"log_warning": False, "log_format": "ISO8601"})
        assert response.json()["log_format"] == "ISO8601"
        logger.warning("hidden: warnings are off")
        logger.error("an error")
    messages = [line.split(": ", 1)[1] for line in handler.lines]
    assert messages == ["a verbose line", "a warning", "an error"]
    # ISO8601: the UTC time first, as 2026-01-31T12:00:00Z
    assert handler.lines[-1].split(" ")[0].endswith("Z") and "T" in handler.lines[-1].split(" ")[0]


@pytest.mark.anyio
async def test_http_logging_updates_are_checked_as_triton(dataplane, settings):
    own, _ = settings
    async with http_client(dataplane, own) as client:
        cases = [
            ({"log_file": "/tmp/x.log"}, 501, "log file location can not be updated through network protocol"),
            ({"log_format": "fancy"}, 400, "invalid argument for log_format, got: fancy"),
            ({"log_info": "yes"}, 400, "expect boolean for 'log_info'"),
            ({"log_verbose_level": -1}, 400, "Unable to parse 'log_verbose_level': expected an unsigned integer"),
        ]
        for body, status, message in cases:
            response = await client.post("/v2/logging", json=body)
            assert (response.status_code, response.json()) == (status, {"error": message})
        assert (await client.post("/v2/logging", json={"log_info": None})).json()["log_info"] is True  # null: unchanged
        assert (await client.put("/v2/logging")).status_code == 405
    assert own.as_dict()["log_format"] == "default"


@pytest.mark.anyio
async def test_grpc_log_settings_change_the_servers_settings(dataplane):
    original = logs.SETTINGS.as_dict()
    port = free_port()
    frontend = v2grpc.frontend(dataplane, ServerOptions(), port)
    await frontend.start()
    try:
        async with aioclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            got = await client.get_log_settings(as_json=True)
            assert got["settings"]["log_info"] == {"bool_param": original["log_info"]}
            updated = await client.update_log_settings({"log_verbose_level": 2, "log_info": False}, as_json=True)
            assert updated["settings"]["log_verbose_level"] == {"uint32_param": 2}
            assert (logs.SETTINGS.log_verbose_level, logs.SETTINGS.log_info) == (2, False)
            with pytest.raises(InferenceServerException) as e:
                await client.update_log_settings({"log_file": "/tmp/x.log"})
            assert (e.value.status(), e.value.message()) == (
                "StatusCode.UNIMPLEMENTED", "log file location can not be updated through network protocol")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:  # a message the client does not write
            request = pb.LogSettingsRequest()
            request.settings["log_verbose_level"].string_param = "loud"
            with pytest.raises(grpc.aio.AioRpcError) as raw:
                await service_pb2_grpc.GRPCInferenceServiceStub(channel).LogSettings(request)
            assert (raw.value.code(), raw.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT, "expect int32 for 'log_verbose_level'")
    finally:
        await frontend.stop()
        logs.SETTINGS.update(**{k: v for k, v in original.items() if k != "log_file"})
