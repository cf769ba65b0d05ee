"""HTTP pieces the TorchServe front ends share: error bodies, JSON answers, request fields.

Errors are TorchServe's pretty-printed `{"code", "type", "message"}` plus a newline, `type`
being the Java exception name TorchServe would report. Request fields follow TorchServe:
multipart and urlencoded forms give one field per form field, any other body is the field
`body`; values are decoded by their content type (JSON, text, else bytes). A field name that
repeats starts a new row, so several files in one request are answered as a batch, at most
the model's batch size: parts are counted as the body is parsed, and the parse stops at the
first row too many, before any value is decoded.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl

import orjson
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from triserve.core.processors import Row
from triserve.errors import Code, ServerError, StatusError, invalid
from triserve.options import DEFAULT_MAX_REQUEST_SIZE
from triserve.protocols.transport import bodies
from triserve.protocols.transport.json_input import check_depth

log = logging.getLogger("triserve")

_STATUS = {
    Code.INVALID_ARG: (400, "BadRequestException"),
    Code.NOT_FOUND: (404, "ModelNotFoundException"),
    Code.UNAVAILABLE: (503, "ServiceUnavailableException"),
    Code.INTERNAL: (500, "InternalServerException"),
    Code.UNSUPPORTED: (501, "InternalServerException"),
    Code.ALREADY_EXISTS: (409, "ConflictStatusException"),
}
_HTTP_TYPES = {404: ("ResourceNotFoundException", "Requested resource is not found, please refer to API document."),
               405: ("MethodNotAllowedException", "Requested method is not allowed, please refer to API document.")}


class RequestTooLarge(ServerError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than max_request_size ({limit} bytes)", Code.INVALID_ARG)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """TorchServe writes indented JSON."""
    return Response(orjson.dumps(data, option=orjson.OPT_INDENT_2), status, headers, media_type="application/json")


def error_response(status: int, kind: str, message: str) -> Response:
    body = orjson.dumps({"code": status, "type": kind, "message": message}, option=orjson.OPT_INDENT_2) + b"\n"
    return Response(body, status, media_type="application/json")


def status_of(error: ServerError) -> tuple[int, str]:
    if isinstance(error, StatusError):
        return error.status, error.kind
    if isinstance(error, RequestTooLarge):
        return 413, "RequestEntityTooLargeException"
    return _STATUS.get(error.code, (500, "InternalServerException"))


async def _server_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServerError)
    status, kind = status_of(exc)
    return error_response(status, kind, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind, message = _HTTP_TYPES.get(exc.status_code, ("BadRequestException", str(exc.detail)))
    return error_response(exc.status_code, kind, message)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path)
    return error_response(500, "InternalServerException", "Internal server error (the server log has the details)")


EXCEPTION_HANDLERS = {ServerError: _server_error, HTTPException: _http_error, Exception: _unexpected}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to pass `limit` (--max-request-size)."""
    try:
        return await bodies.read_body(request, limit)
    except bodies.BodyTooLarge:
        raise RequestTooLarge(limit) from None


def decode_value(data: bytes, content_type: str) -> Any:
    """TorchServe's decode_input_request: JSON -> object, text/* -> str, anything else -> bytes."""
    main, options = parse_options_header(content_type or "")
    main = main.decode("latin-1").lower() if isinstance(main, bytes) else str(main).lower()
    if main == "application/json":
        check_depth(data)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise invalid(f"the request body is not valid JSON: {e}") from None
    if main.startswith("text/"):
        charset = options.get(b"charset", b"utf-8").decode("latin-1")
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError) as e:
            raise invalid(f"the request text cannot be decoded as {charset}: {e}") from None
    return data


class _TooManyRows(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def too_many_rows(what: str, limit: int) -> ServerError:
    return invalid(f"too many rows: the request has {what}, more rows than the model's batch size ({limit});"
                   f" send at most {limit} file(s) per request")


def _multipart(body: bytes, boundary: bytes, max_rows: int | None) -> list[tuple[str, Any]]:
    parts: list[tuple[str, str, bytes]] = []  # name, content type, raw value: decoded once all are counted
    counts: dict[str, int] = {}
    state: dict[str, Any] = {}

    def on_part_begin() -> None:
        state.update(headers={}, data=[], field=b"", value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"].decode("latin-1")
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        disposition, options = parse_options_header(state["headers"].get("content-disposition", ""))
        name = options.get(b"name")
        if name is None:
            raise invalid("a multipart part has no name in its Content-Disposition")
        state["name"] = name.decode("utf-8", "replace")
        counts[state["name"]] = counts.get(state["name"], 0) + 1
        if max_rows is not None and counts[state["name"]] > max_rows:
            raise _TooManyRows(state["name"])  # stop reading: this part would start a row too many
        content_type = state["headers"].get("content-type", "")
        state["type"] = "text/plain" if not content_type and b"filename" not in options else content_type

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        parts.append((state["name"], state["type"], b"".join(state["data"])))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise invalid(f"malformed multipart body: {e}") from None
    except _TooManyRows as e:
        assert max_rows is not None
        delimiters = body.count(b"--" + boundary) - 1  # every part opens with one; the closing one ends them
        what = f"{max(delimiters, max_rows + 1)} parts, {e.name!r} in more than {max_rows} of them"
        raise too_many_rows(what, max_rows) from None
    return [(name, decode_value(value, content_type)) for name, content_type, value in parts]


def request_rows(body: bytes, content_type: str | None, max_rows: int | None = None) -> list[Row]:
    """The request's rows: one per repetition of its field names (one row for ordinary requests),
    at most `max_rows` (more is refused while the body is parsed, before values are decoded)."""
    main, options = parse_options_header(content_type or "")
    main = main.decode("latin-1").lower() if isinstance(main, bytes) else str(main).lower()
    if main == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise invalid("multipart/form-data without a boundary")
        fields = _multipart(body, boundary, max_rows)
    elif main == "application/x-www-form-urlencoded":
        try:
            fields = list(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise invalid("an application/x-www-form-urlencoded body must be text; send files with"
                          " multipart/form-data (curl -F data=@FILE) or as the raw body (curl -T FILE)") from None
    else:
        return [{"body": decode_value(body, content_type or "")}]
    if not fields:
        raise invalid("the request has no form fields")
    if max_rows is not None:
        name, repeats = Counter(name for name, _ in fields).most_common(1)[0]
        if repeats > max_rows:
            raise too_many_rows(f"field {name!r} {repeats} times", max_rows)
    rows: list[Row] = []
    for name, value in fields:
        row = next((r for r in rows if name not in r), None)
        if row is None:
            row = {}
            rows.append(row)
        row[name] = value
    return rows


async def parameters(request: Request, limit: int = DEFAULT_MAX_REQUEST_SIZE) -> dict[str, Any]:
    """Management parameters: the query string, or a JSON object body with the same keys."""
    params: dict[str, Any] = dict(request.query_params)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        body = await read_body(request, limit)
        if body.strip():
            check_depth(body)
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise invalid(f"Invalid JSON body: {e}") from None
            if not isinstance(data, dict):
                raise invalid("the JSON body must be an object")
            params.update(data)
    return params


def flag(params: dict[str, Any], key: str, default: bool) -> bool:
    """Java's Boolean.parseBoolean: "true" in any case is true, anything else false."""
    value = params.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


_JAVA_INT = re.compile(r"^[+-]?[0-9]+$")


def integer(params: dict[str, Any], key: str, default: int) -> int:
    """TorchServe's `getIntParameter`: Java's Integer.parseInt of the value, or `default` when
    the parameter is missing or not an int32 (`batch_size=dd` registers with the default)."""
    value = params.get(key)
    if isinstance(value, bool) or value is None:
        return default
    if isinstance(value, int):
        return value if -(2**31) <= value < 2**31 else default
    text = str(value)
    if not _JAVA_INT.match(text):
        return default
    number = int(text)
    return number if -(2**31) <= number < 2**31 else default
