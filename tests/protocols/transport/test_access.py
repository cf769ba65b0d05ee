"""The request log: one line per request, with its numbers as the record's fields."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from triserve.protocols.transport.access import AccessLog

pytestmark = pytest.mark.anyio


async def infer(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"got": len(body)}, headers={"x-request-id": "from-the-answer"})


async def broken(request: Request) -> Response:
    raise RuntimeError("boom")


APP = Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"]), Route("/broken", broken)])


async def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("10.0.0.7", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, **kwargs)


def access_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "triserve.access"]


async def test_each_request_is_one_line_with_method_path_status_bytes_latency_model_and_id(caplog):
    caplog.set_level(logging.INFO, "triserve.access")
    response = await call(AccessLog(APP), "POST", "/v2/models/simple/infer", content=b"x" * 10,
                          headers={"X-Request-ID": "abc-1"})
    (record,) = access_records(caplog)
    assert (record.method, record.path, record.status, record.model, record.request_id) == (
        "POST", "/v2/models/simple/infer", 200, "simple", "abc-1")
    assert (record.client, record.bytes_in, record.bytes_out) == ("10.0.0.7:5555", 10, len(response.content))
    assert record.levelno == logging.INFO and record.latency_ms >= 0
    assert record.getMessage().startswith('10.0.0.7:5555 "POST /v2/models/simple/infer" 200 in=10B out=')
    assert record.getMessage().endswith(" model=simple id=abc-1")


async def test_the_request_id_of_the_answer_when_the_client_sent_none(caplog):
    caplog.set_level(logging.INFO, "triserve.access")
    await call(AccessLog(APP), "POST", "/v2/models/simple/infer")
    (record,) = access_records(caplog)
    assert record.request_id == "from-the-answer"


async def test_a_front_end_names_its_models_its_own_way(caplog):
    caplog.set_level(logging.INFO, "triserve.access")
    await call(AccessLog(APP, lambda scope: scope["path"].split("/")[3].upper()), "POST", "/v2/models/simple/infer")
    (record,) = access_records(caplog)
    assert record.model == "SIMPLE"


async def test_failed_and_unrouted_requests_are_logged_too(caplog):
    caplog.set_level(logging.INFO, "triserve.access")
    await call(AccessLog(APP), "GET", "/broken")
    await call(AccessLog(APP), "GET", "/nowhere")
    assert [(r.path, r.status, r.model) for r in access_records(caplog)] == [("/broken", 500, ""), ("/nowhere", 404, "")]
    assert [r.getMessage().split()[-2:] for r in access_records(caplog)] == [["model=-", "id=-"]] * 2


async def test_nothing_is_logged_above_info(caplog):
    caplog.set_level(logging.WARNING, "triserve.access")
    assert (await call(AccessLog(APP), "POST", "/v2/models/simple/infer")).status_code == 200
    assert access_records(caplog) == []
