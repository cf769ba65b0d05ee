"""Request fields as TorchServe's handlers see them, management parameters, and error bodies."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from triserve.errors import Code, ServerError, StatusError
from triserve.protocols.torchserve.forms import (
    EXCEPTION_HANDLERS,
    RequestTooLarge,
    decode_value,
    error_response,
    flag,
    integer,
    parameters,
    request_rows,
    status_of,
)


def multipart(*parts: tuple[str, str | None, bytes, str | None]) -> tuple[bytes, str]:
    """A multipart/form-data body as httpx writes it: (name, filename, data, content type) per part."""
    files = [(name, (filename, data, content_type)) for name, filename, data, content_type in parts if filename]
    data = {name: data.decode() for name, filename, data, _ in parts if not filename}
    request = httpx.Request("POST", "http://test", files=files, data=data)
    return request.read(), request.headers["content-type"]


def json_request(body: bytes, query: str = "", content_type: str = "application/json") -> Request:
    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": "POST", "path": "/models", "query_string": query.encode(), "headers": headers}
    return Request(scope, receive)


# -- decode_value ----------------------------------------------------------------------------
def test_values_decode_by_content_type():
    assert decode_value(b'{"a": [1, 2]}', "application/json") == {"a": [1, 2]}
    assert decode_value(b"[1]", "Application/JSON; charset=utf-8") == [1]
    assert decode_value(b"caf\xc3\xa9", "text/plain") == "café"
    assert decode_value(b"caf\xe9", "text/plain; charset=latin-1") == "café"
    assert decode_value(b"\xff\xd8", "image/jpeg") == b"\xff\xd8"
    assert decode_value(b"{}", "") == b"{}"  # no content type: the bytes, as TorchServe


@pytest.mark.parametrize("data, content_type, words", [
    (b"{nope", "application/json", "not valid JSON"),
    (b"\xff", "text/plain", "cannot be decoded as utf-8"),
    (b"x", "text/plain; charset=nonsense", "cannot be decoded as nonsense"),
])
def test_undecodable_values_are_bad_requests(data, content_type, words):
    with pytest.raises(ServerError) as e:
        decode_value(data, content_type)
    assert e.value.code == Code.INVALID_ARG and words in e.value.message


# -- request_rows ------------------------------------------------------------------------------
def test_a_plain_body_is_the_field_body():
    assert request_rows(b"\x00\x01", None) == [{"body": b"\x00\x01"}]
    assert request_rows(b'{"x": 1}', "application/json") == [{"body": {"x": 1}}]
    assert request_rows(b"hello", "text/plain") == [{"body": "hello"}]


def test_multipart_fields_decode_by_their_own_content_type():
    body, content_type = multipart(
        ("data", "cat.jpg", b"\xff\xd8jpeg", "image/jpeg"),
        ("meta", "meta.json", b'{"k": 1}', "application/json"),
        ("note", None, b"plain words", None),
    )
    assert request_rows(body, content_type) == [{"data": b"\xff\xd8jpeg", "meta": {"k": 1}, "note": "plain words"}]


def test_a_repeated_multipart_field_starts_a_new_row():
    body, content_type = multipart(
        ("data", "a.jpg", b"first", "image/jpeg"),
        ("data", "b.jpg", b"second", "image/jpeg"),
        ("data", "c.jpg", b"third", "image/jpeg"),
    )
    assert request_rows(body, content_type) == [{"data": b"first"}, {"data": b"second"}, {"data": b"third"}]


def test_rows_beyond_the_limit_stop_the_parse_before_any_value_is_decoded():
    body, content_type = multipart(
        ("data", "a.json", b'{"ok": 1}', "application/json"),
        ("data", "b.json", b"{not json", "application/json"),  # would be a JSON error if it were decoded
        ("data", "c.json", b"{not json", "application/json"),
    )
    with pytest.raises(ServerError) as e:
        request_rows(body + b"garbage after the end", content_type, max_rows=1)  # never read that far
    assert e.value.code == Code.INVALID_ARG
    assert e.value.message.startswith("too many rows: the request has 3 parts, 'data' in more than 1 of them")
    assert "batch size (1)" in e.value.message
    with pytest.raises(ServerError) as e:
        request_rows(body, content_type, max_rows=3)  # every row fits: the values are decoded
    assert "not valid JSON" in e.value.message


def test_distinct_fields_are_one_row_and_repeated_urlencoded_fields_count():
    body, content_type = multipart(("data", "a.jpg", b"x", "image/jpeg"), ("meta", None, b"y", None))
    assert request_rows(body, content_type, max_rows=1) == [{"data": b"x", "meta": "y"}]
    with pytest.raises(ServerError) as e:
        request_rows(b"data=1&data=2&data=3&x=1", "application/x-www-form-urlencoded", max_rows=2)
    assert "field 'data' 3 times" in e.value.message and "batch size (2)" in e.value.message


def test_urlencoded_fields_are_text_and_repeat_into_rows():
    assert request_rows(b"data=a%2Bb&extra=", "application/x-www-form-urlencoded") == [{"data": "a+b", "extra": ""}]
    assert request_rows(b"data=1&data=2", "application/x-www-form-urlencoded") == [{"data": "1"}, {"data": "2"}]


@pytest.mark.parametrize("body, content_type, words", [
    (b"garbage", "multipart/form-data; boundary=x", "malformed multipart"),
    (b"--x\r\nbad header\r\n\r\nabc\r\n--x--\r\n", "multipart/form-data; boundary=x", "malformed multipart"),
    (b"--x\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\nabc", "multipart/form-data; boundary=x",
     "no form fields"),  # cut short: its one part never ends
    (b"anything", "multipart/form-data", "without a boundary"),
    (b"--x\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--x--\r\n", "multipart/form-data; boundary=x", "no name"),
    (b"--x--\r\n", "multipart/form-data; boundary=x", "no form fields"),
    (b"", "application/x-www-form-urlencoded", "no form fields"),
    (b"\xff\xd8", "application/x-www-form-urlencoded", "multipart/form-data"),
])
def test_malformed_forms_are_bad_requests(body, content_type, words):
    with pytest.raises(ServerError) as e:
        request_rows(body, content_type)
    assert e.value.code == Code.INVALID_ARG and words in e.value.message
    assert status_of(e.value) == (400, "BadRequestException")


# -- management parameters -----------------------------------------------------------------
@pytest.mark.anyio
async def test_parameters_come_from_the_query_and_a_json_body():
    request = json_request(b'{"url": "a.mar", "initial_workers": 2}', "url=b.mar&synchronous=false")
    assert await parameters(request) == {"url": "a.mar", "initial_workers": 2, "synchronous": "false"}
    assert await parameters(json_request(b"  ", "url=b.mar")) == {"url": "b.mar"}
    assert await parameters(json_request(b"not read", "url=c.mar", content_type="text/plain")) == {"url": "c.mar"}


@pytest.mark.anyio
@pytest.mark.parametrize("body, words", [(b"{nope", "Invalid JSON body"), (b"[1]", "must be an object")])
async def test_a_json_body_must_be_an_object(body, words):
    with pytest.raises(ServerError) as e:
        await parameters(json_request(body))
    assert words in e.value.message


@pytest.mark.anyio
async def test_a_parameters_body_over_the_limit_is_refused():
    with pytest.raises(RequestTooLarge) as e:
        await parameters(json_request(b'{"url": "a.mar"}'), limit=4)
    assert status_of(e.value) == (413, "RequestEntityTooLargeException")


def test_flags_and_integers_parse_as_java_does():
    params = {"yes": "TRUE", "no": "false", "bool": True, "n": "3", "blank": "", "native": 7, "word": "three",
              "minus": "-1", "float": "2.5", "huge": "99999999999", "dash": "-1x", "nan": "Nan"}
    assert flag(params, "yes", False) and not flag(params, "no", True) and flag(params, "bool", False)
    assert flag(params, "missing", True) and not flag(params, "missing", False)
    assert not flag(params, "minus", True) and not flag(params, "nan", True)  # parseBoolean: only "true"
    assert integer(params, "n", 0) == 3 and integer(params, "native", 0) == 7 and integer(params, "minus", 0) == -1
    # Integer.parseInt failing gives the default, as TorchServe's getIntParameter
    for key in ("blank", "missing", "word", "float", "huge", "dash", "bool"):
        assert integer(params, key, 42) == 42, key


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_an_unexpected_error_is_a_plain_500():
    async def broken(request: Request) -> Response:
        raise RuntimeError(f"secret {object()!r} in /tmp/triserve-mar-x/model")

    app = Starlette(routes=[Route("/broken", broken)], exception_handlers=EXCEPTION_HANDLERS)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/broken")
    assert response.status_code == 500
    error = response.json()
    assert error["type"] == "InternalServerException" and "server log" in error["message"]
    assert "secret" not in response.text and "0x" not in response.text and "/tmp" not in response.text


def test_errors_map_to_torchserve_status_and_exception_names():
    assert status_of(ServerError("x", Code.NOT_FOUND)) == (404, "ModelNotFoundException")
    assert status_of(ServerError("x", Code.UNAVAILABLE)) == (503, "ServiceUnavailableException")
    assert status_of(ServerError("x", Code.ALREADY_EXISTS)) == (409, "ConflictStatusException")
    assert status_of(ServerError("x", Code.INTERNAL)) == (500, "InternalServerException")
    assert status_of(StatusError("x", 403, "InvalidModelVersionException")) == (403, "InvalidModelVersionException")
    response = error_response(404, "ModelNotFoundException", "Model not found: x")
    assert response.status_code == 404 and response.media_type == "application/json"
    assert response.body == b'{\n  "code": 404,\n  "type": "ModelNotFoundException",\n  "message": "Model not found: x"\n}\n'
