"""Property-based fuzzing of every HTTP API, in-process over a real data plane: whatever a client
sends, the answer is never a 5xx (but 503 for the documented states: model not ready, queue
full, no worker), every error is the protocol's own error body without server internals, and
afterwards a good request is still answered correctly.

A few hundred examples per API, derandomized (the same examples every run); `pytest --long`
runs thousands. Hypothesis runs in a worker thread and sends each request into the test's
event loop, where the data plane lives (anyio.from_thread).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.hostile.strategies import (
    RED_JPEG,
    Request,
    management_requests,
    prediction_requests,
    repository_requests,
    tfserving_requests,
    v2_binary_requests,
    v2_json_requests,
)
from tests.inprocess import running_dataplane, tiny_repository, triton_dataplane
from tests.protocols.torchserve.support import ROW, SUM, archive_dataplane, background_work_done, model_store
from triserve.core.dataplane import DataPlane
from triserve.protocols.kserve.rest import V2HTTP
from triserve.protocols.tfserving.rest import TFServingREST
from triserve.protocols.torchserve.inference import TorchServeInference
from triserve.protocols.torchserve.management import TorchServeManagement
from triserve.repository.tfserving import TFServingModels
from triserve.repository.triton import TritonRepositories

pytestmark = pytest.mark.anyio

EXAMPLES = 400  # per API in CI
LONG = 10  # `--long`: thousands per API

DOCUMENTED_503 = re.compile(
    r"is not at ready state|has no available versions|exceeds maximum queue size|has no worker|Server is not ready"
)
INTERNALS = re.compile(r"object at 0x|Traceback \(most recent call last\)|triserve-(override|mar)-")
SIMPLE = {"inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
]}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope: the module's data planes and its tests share one event loop."""
    return "asyncio"


@pytest.fixture(scope="module")
def examples(request: pytest.FixtureRequest) -> int:
    """Requests per API: a few hundred, or thousands with `pytest --long`."""
    return EXAMPLES * (LONG if request.config.getoption("--long") else 1)


# -- running the fuzzer ------------------------------------------------------------------------------
def client(app: Any) -> httpx.AsyncClient:
    """A client of the ASGI app; an unexpected exception still answers (Starlette's 500) and is checked."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test")


async def fuzz(requests: st.SearchStrategy[Request], api: httpx.AsyncClient,
               check: Callable[[httpx.Response], None], examples: int, seeds: tuple[Request, ...] = (),
               after: Callable[[Request], Awaitable[None]] | None = None) -> None:
    """Send `seeds`, then `examples` requests drawn from `requests`, and `check` each answer
    (`after`: run after each request)."""

    async def send(request: Request) -> httpx.Response:
        headers = {k: v.encode() for k, v in request.headers.items()}  # UTF-8, as a client may send
        response = await api.request(request.method, request.path, content=request.body, headers=headers)
        if after is not None:
            await after(request)
        return response

    def one(request: Request) -> None:
        check(anyio.from_thread.run(send, request))

    run = given(requests)(one)
    for seed in seeds:
        run = example(seed)(run)
    run = settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))(run)
    await anyio.to_thread.run_sync(run)


def _error_json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.text)  # Python's parser: TF Serving JSON may hold NaN tokens
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON: {response.text[:200]!r}") from None


def _no_server_error(response: httpx.Response, message: str) -> None:
    status = response.status_code
    assert status < 500 or (status == 503 and DOCUMENTED_503.search(message)), f"{status} {response.text[:500]}"
    assert not INTERNALS.search(message), f"{status} {message[:500]}"


def v2_answer(response: httpx.Response) -> None:
    """v2 errors are `{"error": message}`; successes are a JSON header (and binary outputs)."""
    if response.status_code < 400:
        length = response.headers.get("inference-header-content-length")
        header = response.content[: int(length)] if length is not None else response.content
        if header:  # health, load and unload answer an empty 200
            assert isinstance(json.loads(header), (dict, list)), response.text[:500]
        return
    body = _error_json(response)
    assert isinstance(body, dict) and list(body) == ["error"] and isinstance(body["error"], str), response.text[:500]
    _no_server_error(response, body["error"])


def tfserving_answer(response: httpx.Response) -> None:
    """TF Serving's errors are `{"error": message}` too; its metrics page is text."""
    if response.status_code < 400:
        return
    body = _error_json(response)
    assert isinstance(body, dict) and list(body) == ["error"] and isinstance(body["error"], str), response.text[:500]
    _no_server_error(response, body["error"])


def torchserve_answer(response: httpx.Response) -> None:
    """TorchServe's errors are `{"code", "type", "message"}`, code being the status."""
    if response.status_code < 400:
        return
    body = _error_json(response)
    assert isinstance(body, dict) and sorted(body) == ["code", "message", "type"], response.text[:500]
    assert body["code"] == response.status_code and isinstance(body["type"], str) and body["type"], response.text[:500]
    assert isinstance(body["message"], str) and body["message"], response.text[:500]
    _no_server_error(response, body["message"])


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


# -- v2 inference --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def v2(tmp_path_factory) -> AsyncIterator[httpx.AsyncClient]:
    async with triton_dataplane(tiny_repository(tmp_path_factory.mktemp("models"))) as dataplane:
        async with client(V2HTTP(dataplane).app()) as api:
            yield api


async def v2_still_answers(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v2/health/live")).status_code == 200
    assert (await api.get("/v2/models/simple/ready")).status_code == 200
    outputs = {o["name"]: o["data"] for o in ok(await api.post("/v2/models/simple/infer", json=SIMPLE))["outputs"]}
    assert outputs == {"OUTPUT0": SUM, "OUTPUT1": [i - 1 for i in range(16)]}


# Inputs the fuzzer found answered wrongly once, tried first on every run.
HUGE_DIMS = Request("POST", "/v2/models/simple/infer", json.dumps({"inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": [0, 2**63], "data": []}]}).encode())


async def test_v2_json_infer_bodies(v2, examples):
    await fuzz(v2_json_requests(), v2, v2_answer, examples, seeds=(HUGE_DIMS,))
    await v2_still_answers(v2)
    assert (await v2.get("/v2/health/ready")).status_code == 200


async def test_v2_binary_infer_bodies(v2, examples):
    await fuzz(v2_binary_requests(), v2, v2_answer, examples)
    await v2_still_answers(v2)
    assert (await v2.get("/v2/health/ready")).status_code == 200


# -- v2 model repository -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def repository(tmp_path_factory) -> AsyncIterator[httpx.AsyncClient]:
    folder = tiny_repository(tmp_path_factory.mktemp("explicit"))
    async with triton_dataplane(folder, control_mode="explicit", load_models=["simple"]) as dataplane:
        async with client(V2HTTP(dataplane).app()) as api:
            yield api


LONG_FILE_NAME = Request("POST", "/v2/repository/models/uploaded/load", json.dumps({"parameters": {
    "config": "{}", "file:1/" + "n" * 300: ""}}).encode())
EMPTY_MODEL_FILE = Request("POST", "/v2/repository/models/doubler/load", json.dumps({"parameters": {
    "config": "{}", "file:1/model.onnx": ""}}).encode())


async def test_v2_repository_index_load_and_unload(repository, examples):
    await fuzz(repository_requests(), repository, v2_answer, examples, seeds=(LONG_FILE_NAME, EMPTY_MODEL_FILE))
    for name in ("simple", "scores", "doubler"):  # each loads again from the repository
        assert (await repository.post(f"/v2/repository/models/{name}/load")).status_code == 200
    states = {row["name"]: row["state"] for row in ok(await repository.post("/v2/repository/index"))}
    assert [states[name] for name in ("simple", "scores", "doubler")] == ["READY"] * 3  # uploads may be listed too
    await v2_still_answers(repository)


# -- TF Serving REST ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def tfserving(tmp_path_factory) -> AsyncIterator[httpx.AsyncClient]:
    """The tiny ONNX models and a classify and a regress SavedModel (tests/savedmodels.py)."""
    from tests.savedmodels import classifier, regressor

    root = tmp_path_factory.mktemp("tfserving")
    for name, make in (("classifier", classifier), ("regressor", regressor)):
        (root / name).mkdir()
        make(root / name / "1")
    conf = root / "models.conf"
    conf.write_text("model_config_list {\n config { name: 'classifier' base_path: 'classifier' }\n"
                    " config { name: 'regressor' base_path: 'regressor' }\n}\n")
    catalogs = [TFServingModels(config_file=conf), TritonRepositories([tiny_repository(root / "onnx")])]
    async with running_dataplane(catalogs) as dataplane:
        async with client(TFServingREST(dataplane).app()) as api:
            yield api


TF_SEEDS = (
    Request("POST", "/v1/models/regressor:classify", b"[NaN, 18446744073709551616]"),
    Request("POST", "/v1/models/classifier:classify", b"[" * 1000 + b"]" * 1000),
    Request("POST", "/v1/models/classifier:classify", b'{"examples": [{}]}'),  # no feature x, no context
    Request("POST", "/v1/models/regressor:regress", b'{"examples": [{}]}'),
    Request("POST", "/v1/models/1%0A:predict", b"{}"),  # a newline in the model name
)


async def test_tfserving_rest_paths_and_bodies(tfserving, examples):
    await fuzz(tfserving_requests(), tfserving, tfserving_answer, examples, seeds=TF_SEEDS)
    instances = [{"INPUT0": list(range(16)), "INPUT1": [1] * 16}]
    assert ok(await tfserving.post("/v1/models/simple:predict", json={"instances": instances}))["predictions"][0][
        "OUTPUT0"] == SUM
    regressed = ok(await tfserving.post("/v1/models/regressor:regress", json={"examples": [{"x": 1.0}]}))
    assert regressed == {"results": [3.0]}


# -- TorchServe ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return model_store(tmp_path_factory.mktemp("store"))


@contextlib.asynccontextmanager
async def torchserve_apis(store: Path) -> AsyncIterator[tuple[DataPlane, httpx.AsyncClient, httpx.AsyncClient]]:
    """adder (JSON tensors) and colors (image_classifier), with their inference and management APIs."""
    async with archive_dataplane(store, "adder.mar", "colors.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            async with client(TorchServeManagement(dataplane, enable_model_api=True).app()) as management:
                yield dataplane, inference, management


async def torchserve_still_answers(inference: httpx.AsyncClient) -> None:
    assert ok(await inference.post("/predictions/adder", json=ROW))["OUTPUT0"] == SUM
    top = ok(await inference.put("/predictions/colors", content=RED_JPEG))
    assert next(iter(top)) == "red"


async def test_torchserve_prediction_forms(store, examples):
    async with torchserve_apis(store) as (_, inference, _):
        undecodable = Request("PUT", "/predictions/colors", b"", {"content-type": "x/y; a=b"})
        await fuzz(prediction_requests(), inference, torchserve_answer, examples, seeds=(undecodable,))
        await torchserve_still_answers(inference)


async def test_torchserve_management_query_strings(store, examples):
    async with torchserve_apis(store) as (dataplane, inference, management):

        async def settled(request: Request) -> None:
            await background_work_done(dataplane)  # what `synchronous=false` left running ends first

        await fuzz(management_requests(), management, torchserve_answer, examples, after=settled)
        for archive in ("adder.mar", "colors.mar"):  # back to one worker each, whatever the fuzzer left
            await management.post("/models", params={"url": archive})
        for model in ("adder", "colors"):
            response = await management.put(f"/models/{model}", params={"min_worker": 1, "synchronous": "true"})
            assert response.status_code == 200, response.text
        await torchserve_still_answers(inference)
