"""Triton's logging extension (`GET|POST /v2/logging`, gRPC LogSettings): the running server's
log settings (triserve.logs.SETTINGS), read and changed with Triton's checks and words."""

from __future__ import annotations

from typing import Any, Mapping

from triserve import logs
from triserve.errors import Code, ServerError, invalid

FORMATS = ("default", "ISO8601")
UINT32_MAX = 2**32 - 1


def current(settings: logs.Settings | None = None) -> dict[str, Any]:
    return (settings or logs.SETTINGS).as_dict()


def update(values: Mapping[str, Any], settings: logs.Settings | None = None, grpc: bool = False) -> dict[str, Any]:
    """Apply an update (JSON values over HTTP, where null means unchanged; the set member of each
    gRPC SettingValue); returns every setting after it. Nothing changes unless all of it is valid."""
    settings = settings or logs.SETTINGS
    if "log_file" in values and (grpc or values["log_file"] is not None):
        raise ServerError("log file location can not be updated through network protocol", Code.UNSUPPORTED)
    changes: dict[str, Any] = {}
    for key in ("log_info", "log_warning", "log_error"):
        value = values.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise invalid(f"expect boolean for '{key}'")
        changes[key] = value
    level = values.get("log_verbose_level")
    if level is not None:
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= UINT32_MAX:
            raise invalid("expect int32 for 'log_verbose_level'" if grpc else "Unable to parse 'log_verbose_level': expected an unsigned integer")
        changes["log_verbose_level"] = level
    log_format = values.get("log_format")
    if log_format is not None:
        if not isinstance(log_format, str):
            raise invalid("expect string for 'log_format'")
        if log_format not in FORMATS:
            raise invalid(f"invalid argument for log_format, got: {log_format[:100]}")
        changes["log_format"] = log_format
    settings.update(**changes)
    return settings.as_dict()


SETTINGS_BODY_LIMIT = 1 << 20


def http_routes(settings: logs.Settings | None = None) -> list:
    import orjson
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from triserve.protocols.transport.bodies import read_body
    from triserve.protocols.transport.json_input import loads_object

    async def logging_route(request: Request) -> Response:
        if request.method == "POST":
            body = await read_body(request, SETTINGS_BODY_LIMIT)
            data = loads_object(body, "the log setting request") if body.strip() else {}
            answer = update(data, settings)
        else:
            answer = current(settings)
        return Response(orjson.dumps(answer), 200, media_type="application/json")

    return [Route("/v2/logging", logging_route, methods=["GET", "POST"])]


def grpc_settings(request: Any, pb: Any, settings: logs.Settings | None = None) -> Any:
    if request.settings:
        values = {}
        for key, value in request.settings.items():
            which = value.WhichOneof("parameter_choice")
            values[key] = getattr(value, which) if which else None
        answer = update(values, settings, grpc=True)
    else:
        answer = current(settings)
    response = pb.LogSettingsResponse()
    for key, value in answer.items():
        if isinstance(value, bool):
            response.settings[key].bool_param = value
        elif isinstance(value, int):
            response.settings[key].uint32_param = value
        else:
            response.settings[key].string_param = value
    return response
