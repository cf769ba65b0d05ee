"""TorchServe inference API (port 8080): `/ping` and `/predictions/{model}[/{version}]`.

`curl -T image.jpg` (PUT), a raw POST body, or multipart fields `data` / `body` (several files
in one request are answered as a JSON list, one answer per file). Each answer is encoded as
TorchServe encodes a handler's result: JSON indented by 2, text, or raw bytes. Errors are
TorchServe's `{"code", "type", "message"}`; an undecodable image is 400 (TorchServe: 503).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from triserve.core.manager import ModelManager
from triserve.handlers import Reply
from triserve.handlers.service import predict, resolve
from triserve.protocols.torchserve_auth import RequireToken, auth_for
from triserve.protocols.torchserve_common import (
    DEFAULT_MAX_REQUEST_SIZE,
    EXCEPTION_HANDLERS,
    json_response,
    read_body,
    request_rows,
)

_HEADERS = {
    "Pragma": "no-cache",
    "Cache-Control": "no-cache; no-store, must-revalidate, private",
    "Expires": "Thu, 01 Jan 1970 00:00:00 UTC",
}


def _encode(reply: Reply) -> tuple[bytes, str | None]:
    value = reply.value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), reply.content_type or None
    if isinstance(value, str):
        return value.encode("utf-8"), reply.content_type or "text/plain; charset=utf-8"
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY), reply.content_type or "application/json"


def _as_json(reply: Reply) -> Any:
    """One answer of a multi-file request, inside the JSON list."""
    value = reply.value
    if isinstance(value, (bytes, bytearray)):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return bytes(value).decode("utf-8", "replace")
    return value


class TorchServeInference:
    def __init__(self, manager: ModelManager, max_request_size: int = DEFAULT_MAX_REQUEST_SIZE) -> None:
        self.manager = manager
        self.max_request_size = max_request_size

    async def ping(self, request: Request) -> Response:
        healthy = self.manager.ready(strict=True)
        return json_response({"status": "Healthy" if healthy else "Unhealthy"}, 200 if healthy else 500)

    async def predictions(self, request: Request) -> Response:
        params = request.path_params
        model, handler, _ = resolve(self.manager, params["model"], params.get("version"))
        body = await read_body(request, self.max_request_size)
        rows = request_rows(body, request.headers.get("content-type"))
        replies = await predict(model, handler, rows)
        headers = {"x-request-id": str(uuid.uuid4()), **_HEADERS}
        if len(replies) == 1:
            content, media_type = _encode(replies[0])
            return Response(content, 200, headers, media_type=media_type)
        content = orjson.dumps([_as_json(r) for r in replies], option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        return Response(content, 200, headers, media_type="application/json")

    def app(self) -> Starlette:
        methods = ["POST", "PUT"]
        routes = [
            Route("/ping", self.ping, methods=["GET", "POST"]),
            Route("/predictions/{model}", self.predictions, methods=methods),
            Route("/predictions/{model}/{version}", self.predictions, methods=methods),
        ]
        return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)


def frontend(server: Any, port: int) -> Any:
    from triserve.server import HTTPFrontEnd

    extra = server.options.extra
    app: Any = TorchServeInference(server.manager, extra.get("max_request_size") or DEFAULT_MAX_REQUEST_SIZE).app()
    auth = auth_for(server)
    if auth is not None:
        app = RequireToken(app, auth, "inference")
    host = extra.get("torchserve_hosts", {}).get("torchserve_inference", server.options.host)
    return HTTPFrontEnd(app, host, port)
