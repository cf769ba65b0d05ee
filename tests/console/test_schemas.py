"""schemathesis against every OpenAPI document the server serves (console/openapi.py over
console/schemas.py): requests generated from each document (valid ones, invalid ones, and valid
ones aimed at real models, plus one known-good body per inference operation) go in-process to the
real ASGI apps of one real data plane; no answer may be a 5xx (except a status the document lists
for that operation, such as 503 while not ready), or break the document's status codes, content
types or schemas. Bounded and derandomized: the same examples every run, no example database."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.console.models import console_repository
from tests.inprocess import triton_dataplane
from triserve.console import Console
from triserve.options import ServerOptions
from triserve.protocols.kserve.rest import V2HTTP
from triserve.protocols.tfserving import rest as tfserving_rest
from triserve.protocols.torchserve import inference, management

CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
APIS = ["http", "tfserving_rest", "torchserve_inference", "torchserve_management"]
EXAMPLES = 8  # per operation in the fast tier
DEEP_EXAMPLES = 25  # per operation in the slow tier
MODELS = ["simple", "scores", "doubler", "colors"]
SIMPLE_INPUTS = [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                 for n in ("INPUT0", "INPUT1")]
# One valid body per inference operation, so successful answers are checked against the schemas too.
GOOD = {
    ("http", "POST", "/v2/models/{model}/infer"): ({"model": "simple"}, {"inputs": SIMPLE_INPUTS}),
    ("http", "POST", "/v2/models/{model}/versions/{version}/infer"): (
        {"model": "simple", "version": 1}, {"inputs": SIMPLE_INPUTS, "outputs": [{"name": "OUTPUT1"}]}),
    ("tfserving_rest", "POST", "/v1/models/{name}:predict"): (
        {"name": "scores"}, {"instances": [[0.1, 0.2, 0.3, 0.2, 0.2]]}),
    ("tfserving_rest", "POST", "/v1/models/{name}/versions/{version}:predict"): (
        {"name": "simple", "version": 1}, {"inputs": {"INPUT0": [list(range(16))], "INPUT1": [list(range(16))]}}),
    ("torchserve_inference", "POST", "/predictions/{model}"): ({"model": "doubler"}, [1.0, 2.0, 3.0]),
    ("torchserve_inference", "PUT", "/predictions/{model}/{version}"): (
        {"model": "doubler", "version": "1"}, [1.0, 2.0, 3.0]),
}


class Harness:
    """The four HTTP APIs over one real data plane, started in the event loop that schemathesis
    runs ASGI apps in (its apps' lifespans start and stop it)."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.apps: dict[str, Any] = {}
        self.users = 0
        self.stack: contextlib.AsyncExitStack | None = None
        self.lock: asyncio.Lock | None = None

    async def start(self) -> None:
        self.lock = self.lock or asyncio.Lock()
        async with self.lock:
            self.users += 1
            if self.stack is not None:
                return
            stack = contextlib.AsyncExitStack()
            dataplane = await stack.enter_async_context(triton_dataplane(self.repository))
            console = Console(dataplane)
            stack.push_async_callback(console.sampler.stop)
            options = ServerOptions()
            console.add_api("tfserving_rest", tfserving_rest.frontend(dataplane, options, 1))
            console.add_api("torchserve_inference", inference.frontend(dataplane, options, 1))
            console.add_api("torchserve_management", management.frontend(dataplane, options, 1))
            self.apps = {"http": V2HTTP(dataplane).app(console.routes()), **console.apis}
            self.stack = stack

    async def stop(self) -> None:
        assert self.lock is not None
        async with self.lock:
            self.users -= 1
            if self.users == 0 and self.stack is not None:
                stack, self.stack = self.stack, None
                await stack.aclose()

    def app(self, api: str) -> Any:
        async def app(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                await receive()
                await self.start()
                await send({"type": "lifespan.startup.complete"})
                await receive()
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
            await self.apps[api](scope, receive, send)

        return app


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    harness = Harness(console_repository(tmp_path_factory.mktemp("repository")))
    yield harness
    schemathesis_asgi.shutdown_lifespans()  # stops the data plane in schemathesis's event loop


def _strategies(api: str, operation: Any) -> Any:
    parameters = {p.name for p in operation.path_parameters}
    strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    name = next((n for n in ("model", "name") if n in parameters), None)
    if name is not None:  # valid requests to models that exist
        for model in MODELS:
            fixed: dict[str, Any] = {name: model}
            if "version" in parameters:
                fixed["version"] = 1
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed))
    return st.one_of(strategies)


def _documented(api: str, case: Any, status: int) -> bool:
    """A 5xx the document lists for the operation: 503 (not ready, or the model control mode does
    not allow it) and Triton's 501 (a feature this server does not enable). The one 500: TorchServe's
    answer to scaling a model to a negative min_worker, which triserve keeps (issue 14)."""
    if str(status) not in case.operation.definition.raw.get("responses", {}):
        return False
    if status == 500:
        return api == "torchserve_management" and case.method.upper() == "PUT" and _negative(case, "min_worker")
    return status in (501, 503)


def _negative(case: Any, name: str) -> bool:
    try:
        return int(str((case.query or {}).get(name))) < 0
    except ValueError:
        return False


@pytest.mark.parametrize("api", APIS)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(harness, api):
    _run_schemathesis(harness, api, EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("api", APIS)
def test_schemathesis_deeper(harness, api):
    _run_schemathesis(harness, api, DEEP_EXAMPLES)


def _run_schemathesis(harness: Harness, api: str, examples: int) -> None:
    v2 = harness.app("http")
    document = schemathesis.openapi.from_asgi(f"/openapi/{api}.json", v2)  # as the server serves it
    schema = schemathesis.openapi.from_dict(document.raw_schema)
    schema.app = v2 if api == "http" else harness.app(api)
    schema.config.generation.update(max_examples=examples, deterministic=True, database="none")
    problems: list[str] = []
    # (looking each one up validates its definition against OpenAPI 3.1's meta-schema)
    operations = [schema[op.path][op.method.upper()] for op in (r.ok() for r in schema.get_all_operations())]
    assert operations
    good = 0
    for operation in operations:
        known = GOOD.get((api, operation.method.upper(), operation.path))
        if known is not None:  # a valid request: its successful answer is checked against the document
            case = operation.Case(path_parameters=known[0], body=known[1], media_type="application/json")
            response = case.call()
            assert response.status_code == 200, (operation.label, response.text)
            case.validate_response(response, checks=CHECKS)
            good += 1
        strategy = _strategies(api, operation)
        calls = [0]

        @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case):
            calls[0] += 1
            response = case.call()
            if response.status_code >= 500 and not _documented(api, case, response.status_code):
                problems.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
                                f"\n  {case.as_curl_command()}")
                return
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as e:  # collected: every operation's problems in one report
                problems.append(f"{case.method} {case.formatted_path}: {str(e)[:1500]}")

        run()
        assert calls[0] > 0, operation.label
    assert good == sum(1 for key in GOOD if key[0] == api)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


@pytest.mark.slow  # TensorFlow: exports three SavedModels
@pytest.mark.anyio
async def test_tensorflow_models_answer_as_the_tf_serving_document_says(tmp_path):
    """Status, metadata (signature defs), row and columnar predict, classify and regress of real
    SavedModels (tests/savedmodels.py), each answer checked against the TF Serving document."""
    import httpx

    from tests.savedmodels import adder, classifier, regressor
    from tests.inprocess import running_dataplane
    from triserve.console import openapi
    from triserve.repository.tfserving import TFServingModels

    for name, make in (("plus", lambda p: adder(p, 1.0)), ("classifier", classifier), ("regressor", regressor)):
        make(tmp_path / name / "1")
    conf = tmp_path / "models.conf"
    conf.write_text("model_config_list {\n" + "\n".join(
        f"config {{ name: '{n}' base_path: '{tmp_path / n}' model_platform: 'tensorflow' }}"
        for n in ("plus", "classifier", "regressor")) + "\n}\n")
    calls = [
        ("GET", "/v1/models/{name}", {"name": "plus"}, None),
        ("GET", "/v1/models/{name}/versions/{version}/metadata", {"name": "plus", "version": 1}, None),
        ("GET", "/v1/models/{name}/metadata", {"name": "classifier"}, None),
        ("POST", "/v1/models/{name}:predict", {"name": "plus"}, {"instances": [[1.0], [2.0]]}),
        ("POST", "/v1/models/{name}:predict", {"name": "plus"}, {"inputs": {"x": [[1.0]]}}),
        ("POST", "/v1/models/{name}:classify", {"name": "classifier"},
         {"context": {"x": 0.0}, "examples": [{"x": 2.0}, {}]}),
        ("POST", "/v1/models/{name}:regress", {"name": "regressor"}, {"examples": [{"x": 1.0}, {"x": [2.0]}]}),
        ("GET", "/monitoring/prometheus/metrics", {}, None),
    ]
    async with running_dataplane([TFServingModels(config_file=conf)]) as dataplane:
        app = tfserving_rest.TFServingREST(dataplane).app()
        schema = schemathesis.openapi.from_dict(openapi.document("tfserving_rest", openapi.routes_of(app)))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tfserving") as client:
            for method, path, parameters, body in calls:
                case = schema[path][method].Case(path_parameters=parameters, body=body if body is not None else
                                                 schemathesis.core.NOT_SET, media_type="application/json")
                url = case.formatted_path
                response = await client.request(method, url, **({"json": body} if body is not None else {}))
                assert response.status_code == 200, (path, response.text)
                case.validate_response(response, checks=CHECKS)
