"""Hostile HTTP, over real sockets to real front ends started in-process (the v2 HTTP, TF Serving
REST and TorchServe apps over one data plane of the tiny models): bodies past the size limit
(announced, chunked, compressed), chunk floods, smuggling shapes, header floods, slow
connections and JSON nested past any parser's recursion. Each is answered with its protocol's
own status and error format, while health checks and good inferences on another connection keep
being answered right. The times these take are printed (`pytest -s`), never asserted."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import AsyncIterator, Awaitable, TypeVar

import httpx
import orjson
import pytest

from tests.inprocess import tiny_repository, triton_dataplane
from tests.rawhttp import Answer, bomb, chunk, connect, exchange, request, serving
from triserve.core.dataplane import DataPlane
from triserve.options import DEFAULT_HTTP_MAX_INPUT_SIZE, DEFAULT_MAX_REQUEST_SIZE, HTTPOptions
from triserve.protocols.kserve.rest import V2HTTP
from triserve.protocols.tfserving import rest as tfserving_rest
from triserve.protocols.torchserve.inference import TorchServeInference
from triserve.protocols.torchserve.management import TorchServeManagement

pytestmark = pytest.mark.anyio
T = TypeVar("T")

MiB = 1 << 20
GiB = 1 << 30
LIMIT = DEFAULT_HTTP_MAX_INPUT_SIZE
HINT = "Use --http-max-input-size to increase the limit."
DEPTH_ERROR = "JSON nesting depth exceeds maximum allowed limit (100)"
GOOD = 10  # rounds of a health check and a good inference alongside each hostile request
SIMPLE = {"inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
]}
SUM, DIFFERENCE = [i + 1 for i in range(16)], [i - 1 for i in range(16)]
INFER = "/v2/models/simple/infer"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: the module's servers and tests share one event loop


@pytest.fixture(scope="module")
async def dataplane(tmp_path_factory) -> AsyncIterator[DataPlane]:
    async with triton_dataplane(tiny_repository(tmp_path_factory.mktemp("models"))) as plane:
        yield plane


@pytest.fixture(scope="module")
async def ports(dataplane) -> AsyncIterator[dict[str, int]]:
    """Each front end with the default limits, on its own free port."""
    async with contextlib.AsyncExitStack() as stack:
        yield {
            "v2": await stack.enter_async_context(serving(V2HTTP(dataplane).app())),
            "tfserving": await stack.enter_async_context(serving(
                tfserving_rest.TFServingREST(dataplane).app(), model_of=tfserving_rest.model_of)),
            "torchserve": await stack.enter_async_context(serving(TorchServeInference(dataplane).app())),
            "management": await stack.enter_async_context(serving(TorchServeManagement(dataplane).app())),
        }


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """1 GiB of zeros, gzip and deflate, about 1 MB each."""
    return {encoding: bomb(encoding, GiB) for encoding in ("gzip", "deflate")}


# -- what every test checks -------------------------------------------------------------
async def good_requests(port: int, count: int = GOOD) -> list[float]:
    """`count` health checks and good inferences on `simple`, each answered right; the health
    checks' latencies in ms."""
    latencies = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            assert (await client.get("/v2/health/live")).status_code == 200
            latencies.append((time.perf_counter() - started) * 1000)
            answer = await client.post(INFER, json=SIMPLE)
            assert answer.status_code == 200, answer.text
            outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
            assert outputs == {"OUTPUT0": SUM, "OUTPUT1": DIFFERENCE}
    return latencies


async def alongside(port: int, hostile: Awaitable[T], what: str) -> T:
    """Run `hostile` while good requests go to `port`; every good one must be answered right."""
    started = time.perf_counter()
    task = asyncio.ensure_future(hostile)
    done_at = []
    task.add_done_callback(lambda _: done_at.append(time.perf_counter()))
    latencies = await good_requests(port)
    result = await task
    print(f"\n{what}: answered in {(done_at[0] - started) * 1000:.0f} ms; {len(latencies)} health checks"
          f" alongside, slowest {max(latencies):.1f} ms")
    return result


def v2_error(answer: Answer, status: int = 400) -> str:
    """Triton's error body: {"error": message}, as JSON."""
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert list(body) == ["error"]
    return body["error"]


def torchserve_error(answer: Answer, status: int, kind: str) -> str:
    assert answer.status == status, answer
    body = answer.json()
    assert (body["code"], body["type"]) == (status, kind)
    return body["message"]


def post(path: str, body: bytes, **headers: str) -> bytes:
    return request("POST", path, {"Content-Type": "application/json", **headers}, body)


# -- bodies past the limit ----------------------------------------------------------------
async def test_a_1_gib_content_length_is_refused_before_the_body_is_sent(ports):
    refused = {}
    for name, path in (("v2", INFER), ("tfserving", "/v1/models/scores:predict"), ("torchserve", "/predictions/simple")):
        connection = await connect(ports[name])
        await connection.send(request("POST", path, {"Content-Type": "application/json", "Content-Length": str(GiB)}))
        refused[name] = await connection.answer()  # only the headers were sent
        await good_requests(ports["v2"])  # while the hostile connection is open, its body unsent
        connection.close()
    assert v2_error(refused["v2"]) == (
        f"request size of {GiB} bytes exceeds the maximum allowed input size of {LIMIT} bytes. {HINT}")
    assert v2_error(refused["tfserving"]) == v2_error(refused["v2"])  # TF Serving's format is Triton's
    message = torchserve_error(refused["torchserve"], 413, "RequestEntityTooLargeException")
    assert message == f"request body is larger than max_request_size ({DEFAULT_MAX_REQUEST_SIZE} bytes)"


@pytest.mark.parametrize("name, path, limit", [
    ("v2", INFER, LIMIT),
    ("tfserving", "/v1/models/scores:predict", LIMIT),
    ("torchserve", "/predictions/simple", DEFAULT_MAX_REQUEST_SIZE),
])
async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(ports, name, path, limit):
    connection = await connect(ports[name])
    await connection.send(request("POST", path, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
    piece = chunk(b" " * MiB)
    for _ in range(limit // MiB // 2):
        await connection.send(piece)  # half the limit: the request is in flight, the server waiting for more
    await good_requests(ports["v2"])
    started = time.perf_counter()
    answer, sent = await connection.send_until_answered(itertools.repeat(piece, GiB // MiB))  # 1 GiB more
    print(f"\nchunked 1 GiB to {name}: refused {(time.perf_counter() - started) * 1000:.0f} ms after the gate,"
          f" {sent // MiB} MiB sent")
    connection.close()
    assert sent < 256 * MiB  # refused long before the GiB was sent
    if name == "torchserve":
        assert "max_request_size" in torchserve_error(answer, 413, "RequestEntityTooLargeException")
    else:
        assert v2_error(answer) == (
            f"request size of more than {limit} bytes exceeds the maximum allowed input size of {limit} bytes. {HINT}")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("name, path", [("v2", INFER), ("tfserving", "/v1/models/scores:predict")])
async def test_a_1_gib_compression_bomb_is_refused_at_the_limit(ports, bombs, encoding, name, path):
    body = bombs[encoding]
    answer = await alongside(
        ports["v2"], exchange(ports[name], post(path, body, **{"Content-Encoding": encoding})),
        f"{len(body) / MiB:.1f} MiB {encoding} bomb (1 GiB inflated) to {name}",
    )
    assert v2_error(answer) == f"Decompressed data size exceeds the maximum allowed value of {LIMIT} bytes. {HINT}"


async def test_a_million_one_byte_chunks_are_read_and_answered_right(ports):
    document = orjson.dumps(SIMPLE)
    padded = document + b" " * (1_000_000 - len(document))  # JSON whitespace: still the same request
    flood = b"".join(chunk(padded[i : i + 1]) for i in range(len(padded))) + b"0\r\n\r\n"
    head = request("POST", INFER, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    answer = await alongside(ports["v2"], exchange(ports["v2"], head + flood), "1,000,000 one-byte chunks")
    assert answer.status == 200
    assert {o["name"]: o["data"] for o in answer.json()["outputs"]} == {"OUTPUT0": SUM, "OUTPUT1": DIFFERENCE}


# -- what the HTTP parser refuses ---------------------------------------------------------
@pytest.mark.parametrize("framing", [
    "Content-Length: 5\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: chunked\r\nContent-Length: 5",
    "Content-Length: 5\r\nContent-Length: 6",
    "Content-Length: -1",
    "Content-Length: 18446744073709551616",
    "Content-Length: 99999999999999999999999999",
    "Content-Length: 1e3",
    "Transfer-Encoding: chunked, gzip",
])
async def test_smuggling_shapes_and_impossible_lengths_are_400_and_close_the_connection(ports, framing):
    connection = await connect(ports["v2"])
    await connection.send(f"POST {INFER} HTTP/1.1\r\nHost: test\r\n{framing}\r\n\r\n0\r\n\r\n".encode())
    answer = await connection.answer()
    assert (answer.status, answer.body) == (400, b"Invalid HTTP request received.")
    assert answer.headers["connection"] == "close"
    assert await connection.rest() == b""
    await good_requests(ports["v2"], 1)


async def test_a_thousand_header_fields_are_431(ports):
    fields = {f"X-Field-{i}": "v" for i in range(1000)}
    answer = await alongside(ports["v2"], exchange(ports["v2"], request("GET", "/v2/health/live", fields)),
                             "1,000 header fields")
    assert (answer.status, answer.body) == (431, b"too many header fields: 1001, at most 100 (--http-max-headers)")


async def test_a_1_mib_header_is_431(ports):
    answer = await alongside(ports["v2"], exchange(ports["v2"], request("GET", "/v2/health/live", {"X-Big": "a" * MiB})),
                             "one 1 MiB header")
    assert answer.status == 431
    assert answer.body == b"request header fields too large: more than 65536 bytes (--http-max-header-size)"


async def test_slow_connections_are_closed_at_the_header_timeout(dataplane):
    async with serving(V2HTTP(dataplane).app(), HTTPOptions(header_timeout=0.5)) as port:

        async def trickle() -> Answer:
            """A byte every 50 ms (pacing a slow client, not ordering events) until answered."""
            connection = await connect(port)
            answer = asyncio.ensure_future(connection.answer())
            with contextlib.suppress(ConnectionError, OSError):
                for byte in itertools.cycle(b"GET /v2/health/live HTTP/1.1\r\nX: "):
                    if answer.done():
                        break
                    await connection.send(bytes([byte]))
                    await asyncio.sleep(0.05)
            connection.close()
            return await answer

        started = time.perf_counter()
        answers = await alongside(port, asyncio.gather(*(trickle() for _ in range(100))), "100 slow connections")
        print(f"100 slow connections closed {(time.perf_counter() - started) * 1000:.0f} ms after they opened")
        assert {(a.status, a.body) for a in answers} == {
            (408, b"request headers not complete within the header timeout of 0.5 s")}


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_that_trickles_in_gets_408_at_the_body_timeout(dataplane, framing):
    """Headers at once, then the body a byte every 50 ms (pacing a slow client, not ordering
    events): each connection is answered 408 and closed, and the good clients keep being served."""
    async with serving(V2HTTP(dataplane).app(), HTTPOptions(body_timeout=0.5)) as port:
        if framing == "chunked":
            head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            piece = lambda byte: b"1\r\n" + bytes([byte]) + b"\r\n"  # noqa: E731
        else:
            head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
            piece = lambda byte: bytes([byte])  # noqa: E731

        async def trickle() -> tuple[Answer, int]:
            connection = await connect(port)
            answer = asyncio.ensure_future(connection.answer())
            sent = 0
            await connection.send(head)
            with contextlib.suppress(ConnectionError, OSError):
                for byte in itertools.cycle(orjson.dumps(SIMPLE)):
                    if answer.done():
                        break
                    await connection.send(piece(byte))
                    sent += 1
                    await asyncio.sleep(0.05)
            connection.close()
            return await answer, sent

        answers = await alongside(port, asyncio.gather(*(trickle() for _ in range(20))), "20 slow bodies")
        assert {(a.status, a.headers.get("connection"), a.body) for a, _ in answers} == {(
            408, "close", b"request body not received within the body timeout of 0.5 s (--http-body-timeout),"
            b" extended by a second per 500 bytes received")}
        assert all(sent > 0 for _, sent in answers)


async def test_a_body_that_keeps_coming_in_is_not_cut_off_by_the_body_timeout(dataplane):
    """Past the timeout, the body still counts: a body that keeps the minimum rate is read whole
    (here 8 pieces of 600 bytes, 0.1 s apart; the bare timeout, 0.01 s, has long passed by the last)."""
    async with serving(V2HTTP(dataplane).app(), HTTPOptions(body_timeout=0.01)) as port:
        body = orjson.dumps(SIMPLE).ljust(8 * 600)  # trailing spaces are valid JSON
        connection = await connect(port)
        await connection.send(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for start in range(0, len(body), 600):
            await connection.send(body[start : start + 600])
            await asyncio.sleep(0.1)  # pacing: past the bare timeout, well within what 600 bytes add
        answer = await connection.answer()
        connection.close()
        assert answer.status == 200, answer
        assert {o["name"]: o["data"] for o in answer.json()["outputs"]} == {"OUTPUT0": SUM, "OUTPUT1": DIFFERENCE}


async def test_connections_past_the_cap_get_503_and_the_ones_within_keep_being_served(dataplane):
    async with serving(V2HTTP(dataplane).app(), HTTPOptions(max_connections=20)) as port:
        held = []
        for _ in range(19):  # 19 kept-alive connections; the good requests' client makes the 20th
            connection = await connect(port)
            await connection.send(request("GET", "/v2/health/live"))
            assert (await connection.answer()).status == 200
            held.append(connection)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/v2/health/live")).status_code == 200
            answer = await exchange(port, request("GET", "/v2/health/live"))  # the 21st
            assert (answer.status, answer.body) == (503, b"Service Unavailable")
            assert (await client.get("/v2/health/live")).status_code == 200
        for connection in held:
            connection.close()


# -- JSON past any parser's recursion, and what only the standard parser reads -----------
@pytest.mark.parametrize("name, path, body", [
    ("tfserving", "/v1/models/scores:predict", b'{"instances": ' + b"[" * 150_000 + b"]" * 150_000 + b"}"),
    ("v2", INFER, b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1], "data": '
                  + b"[" * 150_000 + b"]" * 150_000 + b"}]}"),
    ("v2", "/v2/repository/models/simple/load", b'{"parameters": ' + b'{"a": ' * 150_000 + b"1" + b"}" * 150_001),
])
async def test_json_nested_150000_deep_is_400_in_tritons_words(ports, name, path, body):
    answer = await alongside(ports["v2"], exchange(ports[name], post(path, body)), f"JSON 150,000 deep to {name}")
    assert v2_error(answer) == DEPTH_ERROR


async def test_json_nested_150000_deep_to_torchserve_is_400_in_its_format(ports):
    deep = b"[" * 150_000 + b"]" * 150_000
    answer = await exchange(ports["torchserve"], post("/predictions/simple", deep))
    assert torchserve_error(answer, 400, "BadRequestException") == DEPTH_ERROR
    answer = await exchange(ports["management"], request("PUT", "/models/simple", {"Content-Type": "application/json"},
                                                         b'{"min_worker": ' + deep + b"}"))
    assert torchserve_error(answer, 400, "BadRequestException") == DEPTH_ERROR


@pytest.mark.parametrize("body, words", [
    (b"[NaN, 18446744073709551616]", "JSON Value: [NaN,18446744073709551616] Is not object"),
    (b'{"instances": [NaN, 18446744073709551616]}', "'INPUT'"),  # refused for its shape or its values
    (b'{"inputs": [[NaN, 18446744073709551616, 1, 2, 3]]}', "'INPUT'"),
])
async def test_values_only_the_standard_parser_reads_are_400_from_tfserving_rest(ports, body, words):
    answer = await exchange(ports["tfserving"], post("/v1/models/scores:predict", body))
    assert words in v2_error(answer)


async def test_a_refused_load_request_logs_its_reason(ports, caplog):
    caplog.set_level(logging.WARNING, "triserve")
    body = b'{"parameters": {"config": "{not json"}}'
    message = v2_error(await exchange(ports["v2"], post("/v2/repository/models/simple/load", body)))
    assert message.startswith("failed to load 'simple', failed to poll from model repository: failed to parse model config JSON")
    assert f"refused to load model 'simple': {message}" in caplog.messages
