"""The request log: one line per HTTP request on the logger `triserve.access`, at info.

Client, method, path, status, bytes received and sent, latency, the model the request named and
its request id (the client's X-Request-ID header, else the one the answer carries). With
`--log-format json` each field is also a key of the line's JSON object.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

log = logging.getLogger("triserve.access")

_REQUEST_ID = b"x-request-id"


def _route_model(scope: dict[str, Any]) -> str:
    """The route's `model` path parameter (Starlette's router adds path_params to the scope)."""
    return str(scope.get("path_params", {}).get("model", ""))


class AccessLog:
    """ASGI middleware that logs each HTTP request once its answer is sent (or the client left)."""

    def __init__(self, app: Any, model_of: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.app = app
        self.model_of = model_of or _route_model

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        counts = {"status": 0, "in": 0, "out": 0}
        request_id = dict(scope["headers"]).get(_REQUEST_ID, b"").decode("latin-1")

        async def counted_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                counts["in"] += len(message.get("body", b""))
            return message

        async def counted_send(message: dict[str, Any]) -> None:
            nonlocal request_id
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
                if not request_id:
                    request_id = dict(message.get("headers", ())).get(_REQUEST_ID, b"").decode("latin-1")
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted_receive, counted_send)
        finally:
            self._log(scope, counts, time.perf_counter() - started, request_id)

    def _log(self, scope: dict[str, Any], counts: dict[str, int], seconds: float, request_id: str) -> None:
        try:
            model = self.model_of(scope)
        except Exception:  # a path the front end could not match names no model
            model = ""
        client = scope.get("client")
        fields = {
            "client": f"{client[0]}:{client[1]}" if client else "-",
            "method": scope["method"],
            "path": scope["path"],
            "status": counts["status"],  # 0: the client went away before an answer
            "bytes_in": counts["in"],
            "bytes_out": counts["out"],
            "latency_ms": round(seconds * 1000, 3),
            "model": model,
            "request_id": request_id,
        }
        log.info(
            '%s "%s %s" %d in=%dB out=%dB %.1fms model=%s id=%s',
            fields["client"], fields["method"], fields["path"], fields["status"], fields["bytes_in"],
            fields["bytes_out"], fields["latency_ms"], model or "-", request_id or "-",
            extra=fields,
        )
