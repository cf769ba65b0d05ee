import httpx
import pytest
from openapi_spec_validator import validate

from tests.console.models import console_repository
from tests.inprocess import triton_dataplane
from triserve.console import Console, openapi, schemas
from triserve.options import ServerOptions
from triserve.protocols.kserve.rest import V2HTTP
from triserve.protocols.tfserving import rest as tfserving_rest
from triserve.protocols.torchserve import inference, management


def _console_app(dataplane):
    console = Console(dataplane)
    options = ServerOptions()
    console.add_api("tfserving_rest", tfserving_rest.frontend(dataplane, options, 1))
    console.add_api("torchserve_inference", inference.frontend(dataplane, options, 1))
    console.add_api("torchserve_management", management.frontend(dataplane, options, 1))
    console.add_api("grpc", object())  # not an HTTP API: not documented
    return console, V2HTTP(dataplane).app(console.routes())


@pytest.mark.anyio
async def test_every_http_api_has_a_valid_openapi_31_document_from_its_routes(tmp_path):
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        console, app = _console_app(dataplane)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            v2 = (await client.get("/openapi.json")).json()
            documents = {api: (await client.get(f"/openapi/{api}.json")).json()
                         for api in ("http", "tfserving_rest", "torchserve_inference", "torchserve_management")}
            missing = await client.get("/openapi/grpc.json")
        await console.sampler.stop()
    assert v2 == documents["http"]
    for api, doc in documents.items():
        assert doc["openapi"] == "3.1.0", api
        validate(doc)  # raises on an invalid document
        assert doc["paths"], api
    paths = v2["paths"]
    infer = paths["/v2/models/{model}/versions/{version}/infer"]["post"]
    assert {p["name"]: p["schema"]["type"] for p in infer["parameters"] if p["in"] == "path"} == {
        "model": "string", "version": "integer"}
    assert "get" in paths["/v2/health/ready"]
    assert "post" in paths["/v2/repository/models/{model}/load"]
    assert "get" in paths["/console/api/models"]
    assert "/" not in paths and not any(p.startswith(("/docs", "/openapi")) for p in paths)
    assert any(p.startswith("/predictions/") for p in documents["torchserve_inference"]["paths"])
    assert "/models" in documents["torchserve_management"]["paths"]
    assert documents["torchserve_management"]["components"]["schemas"]["Error"]["required"] == ["code", "type", "message"]
    assert missing.status_code == 404
    tfserving = documents["tfserving_rest"]["paths"]
    for suffix in ("", "/versions/{version}", "/labels/{label}"):
        model = "/v1/models/{name}" + suffix
        assert set(tfserving[model]) == set(tfserving[model + "/metadata"]) == {"get"}
        for verb in ("predict", "classify", "regress"):
            assert set(tfserving[f"{model}:{verb}"]) == {"post"}
    versioned = tfserving["/v1/models/{name}/versions/{version}:predict"]["post"]
    assert {p["name"]: p["schema"]["type"] for p in versioned["parameters"] if p["in"] == "path"} == {
        "name": "string", "version": "integer"}
    assert documents["tfserving_rest"]["components"]["schemas"]["Error"]["required"] == ["error"]


@pytest.mark.anyio
async def test_every_documented_operation_has_its_bodies_described(tmp_path):
    """No route falls back to a generic body: each has an entry in console/schemas.py (a route
    added without one fails here), and every entry belongs to a route (none is left stale)."""
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        console, app = _console_app(dataplane)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            documents = {api: (await client.get(f"/openapi/{api}.json")).json() for api in openapi.APIS}
        await console.sampler.stop()
    for api, doc in documents.items():
        routed = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
        assert routed == set(schemas.OPERATIONS[api]), api
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                assert set(operation["responses"]) - {"default"}, (api, method, path)
                for answer in operation["responses"].values():
                    for media in answer.get("content", {}).values():
                        assert media["schema"] not in ({}, {"type": "object"}), (api, method, path)
    infer = documents["http"]["paths"]["/v2/models/{model}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/InferRequest"}
    request_input = documents["http"]["components"]["schemas"]["RequestInput"]
    assert request_input["required"] == ["name", "shape", "datatype"]
    assert "FP32" in request_input["properties"]["datatype"]["enum"]
    predict = documents["tfserving_rest"]["paths"]["/v1/models/{name}:predict"]["post"]
    assert predict["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictResponse"}
    describe = documents["torchserve_management"]["paths"]["/models/{model}"]["get"]
    assert describe["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ModelDescriptions"}


def test_the_document_follows_the_routes():
    """A route added to a table is in the document: nothing is a hand-kept copy."""
    from starlette.routing import Route

    async def endpoint(request):
        """Say hello.

        Longer words."""

    doc = openapi.document("http", [Route("/v2/hello/{n:int}", endpoint, methods=["PUT"])])
    operation = doc["paths"]["/v2/hello/{n}"]["put"]
    assert operation["summary"] == "Say hello."
    assert operation["description"] == "Longer words."
    assert operation["parameters"][0]["schema"] == {"type": "integer"}
    validate(doc)


@pytest.mark.anyio
async def test_docs_serve_swagger_ui_from_the_package(tmp_path):
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        console, app = _console_app(dataplane)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            page = await client.get("/docs")
            bundle = await client.get("/docs/swagger-ui-bundle.js")
            css = await client.get("/docs/swagger-ui.css")
            other = await client.get("/docs/index.j2")
    assert page.status_code == 200
    assert "/openapi/http.json" in page.text and "/openapi/torchserve_management.json" in page.text
    assert "https://" not in page.text
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.content
    assert css.status_code == 200
    assert other.status_code == 404
