"""TorchServe inference API (port 8080): `/ping` and `/predictions/{model}[/{version}]`.

`curl -T image.jpg` (PUT), a raw POST body, or multipart fields `data` / `body` (several files
in one request, up to the model's batch size, are one job answered as a JSON list, one answer
per file; more files than that is 400). Each answer is encoded as TorchServe encodes a
handler's result: JSON indented by 2, text, or raw bytes. Errors are TorchServe's
`{"code", "type", "message"}`; an undecodable image is 400 (TorchServe: 503).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from triserve.core.dataplane import DataPlane, ModelNotFound, NotReady, VersionNotFound, max_rows
from triserve.core.model import Model
from triserve.core.processors import Reply
from triserve.errors import StatusError, not_found
from triserve.options import DEFAULT_MAX_REQUEST_SIZE, ServerOptions
from triserve.protocols.torchserve import openapi
from triserve.protocols.torchserve.auth import RequireToken, auth_for
from triserve.protocols.torchserve.metrics import CountResponses, TorchServeMetrics, metrics_for
from triserve.protocols.torchserve.forms import EXCEPTION_HANDLERS, json_response, read_body, request_rows
from triserve.protocols.transport.http import HTTPFrontEnd

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


def no_worker(name: str, reason: str = "") -> StatusError:
    return StatusError(
        f'Model "{name}" has no worker to serve inference request. Please use scale workers API to add workers.'
        + (f" ({reason})" if reason else ""),
        503,
        "ServiceUnavailableException",
    )


def find_model(dataplane: DataPlane, name: str, version: str | None) -> Model:
    """The model `/predictions/{name}[/{version}]` names, with TorchServe's errors."""
    try:
        if version and dataplane.is_registered(name) and version not in dataplane.aliases(name):
            raise VersionNotFound(name, version)  # an archive's versions are its version strings
        dataplane.check_version(name, version)  # a version the model never had is 404, not "no worker"
        return dataplane.resolve(name, version)
    except ModelNotFound:
        raise not_found(f"Model not found: {name}") from None
    except VersionNotFound:
        raise StatusError(f"Model version: {version} does not exist for model: {name}", 404,
                          "ModelVersionNotFoundException") from None
    except NotReady as e:
        raise no_worker(name, e.reason) from None


class TorchServeInference:
    def __init__(self, dataplane: DataPlane, max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
                 metrics: TorchServeMetrics | None = None) -> None:
        self.dataplane = dataplane
        self.max_request_size = max_request_size
        self.metrics = metrics

    async def api_description(self, request: Request) -> Response:
        return json_response(openapi.inference_api())

    async def ping(self, request: Request) -> Response:
        healthy = self.dataplane.ready(strict=True)
        return json_response({"status": "Healthy" if healthy else "Unhealthy"}, 200 if healthy else 500)

    async def predictions(self, request: Request) -> Response:
        params = request.path_params
        # 404 / 503 before reading the body; one request is one job, of at most the model's batch size
        limit = max_rows(find_model(self.dataplane, params["model"], params.get("version")))
        body = await read_body(request, self.max_request_size)
        rows = request_rows(body, request.headers.get("content-type"), limit)
        model = find_model(self.dataplane, params["model"], params.get("version"))
        replies = await self.dataplane.predict(model, rows)
        if self.metrics is not None:
            self.metrics.request_served(model, params.get("version"))
        headers = {"x-request-id": str(uuid.uuid4()), **_HEADERS}
        if len(replies) == 1:
            content, media_type = _encode(replies[0])
            return Response(content, 200, headers, media_type=media_type)
        content = orjson.dumps([_as_json(r) for r in replies], option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        return Response(content, 200, headers, media_type="application/json")

    def app(self) -> Starlette:
        methods = ["POST", "PUT"]
        routes = [
            Route("/", self.api_description, methods=["OPTIONS"]),
            Route("/api-description", self.api_description, methods=["GET"]),
            Route("/ping", self.ping, methods=["GET", "POST"]),
            Route("/predictions/{model}", self.predictions, methods=methods),
            Route("/predictions/{model}/{version}", self.predictions, methods=methods),
        ]
        return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)


def frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> HTTPFrontEnd:
    metrics = metrics_for(dataplane, options.torchserve.metrics_mode)
    app: Any = TorchServeInference(dataplane, options.torchserve.max_request_size, metrics).app()
    auth = auth_for(dataplane, options.torchserve)
    if auth is not None:
        app = RequireToken(app, auth, "inference")
    app = CountResponses(app, metrics)
    return HTTPFrontEnd(app, options.host_of("torchserve_inference"), port, options.http)
