"""OpenAPI 3.1 documents generated from the front ends' own routes (Starlette route tables, and
TF Serving REST's table of `TFRoute`s): every path, method and typed path parameter as the server
routes it, the handler's docstring as the summary, and each operation's request and response
bodies from console/schemas.py (with each protocol's error body). Served at /openapi.json (the v2
HTTP port's API), /openapi/{api}.json (each HTTP API this server runs) and rendered by Swagger UI
at /docs."""

from __future__ import annotations

import re
from typing import Any, Iterable

from starlette.routing import BaseRoute, Mount, Route

from triserve import __version__
from triserve.console import schemas

OPENAPI_VERSION = "3.1.0"

# name -> (title, description)
APIS: dict[str, tuple[str, str]] = {
    "http": ("KServe v2 HTTP", "The KServe v2 inference protocol with Triton's extensions (binary tensors,"
             " classification, statistics, model configuration, model repository, shared memory, trace, logging)"
             " and the triserve console's JSON endpoints."),
    "tfserving_rest": ("TF Serving REST", "TensorFlow Serving's REST API (predict, classify, regress, status,"
                       " metadata) and its Prometheus metrics; errors are {\"error\": message}."),
    "torchserve_inference": ("TorchServe inference", "TorchServe's inference API."),
    "torchserve_management": ("TorchServe management", "TorchServe's management API."),
}
_CONVERTORS = {"IntegerConvertor": {"type": "integer"}, "FloatConvertor": {"type": "number"}}
# The page and its assets are not an API.
_HIDDEN = re.compile(r"^/($|console$|console/\{|docs|openapi)")


def routes_of(app: Any) -> list[BaseRoute]:
    """The route table of an ASGI app, through the middleware wrapped around it (each keeps the
    app it wraps as `.app`)."""
    for _ in range(16):
        if isinstance(getattr(app, "routes", None), list):
            return list(app.routes)
        app = getattr(app, "app", None)
        if app is None:
            break
    return []


def _flatten(routes: Iterable[BaseRoute], prefix: str = "") -> Iterable[tuple[str, Route]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _flatten(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            yield prefix + route.path_format, route


def _summary(route: Route, method: str, path: str) -> tuple[str, str]:
    doc = (getattr(route.endpoint, "__doc__", None) or "").strip()
    if not doc:
        return f"{method} {path}", ""
    first, _, rest = doc.partition("\n\n")
    return " ".join(first.split()), " ".join(rest.split())


def _tag(path: str) -> str:
    """The group an operation is listed under: its path's first word (after /v2 or /v1)."""
    words = [w for w in path.split("/") if w and not w.startswith("{")]
    if words and words[0] in ("v1", "v2") and len(words) > 1:
        return words[1]
    return words[0] if words else "server"


def _operation_id(method: str, path: str, used: set[str]) -> str:
    base = method.lower() + "_" + (re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root")
    name, n = base, 2
    while name in used:
        name, n = f"{base}_{n}", n + 1
    used.add(name)
    return name


_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _described(entry: dict[str, Any], operation: dict[str, Any]) -> None:
    """The bodies, query and header parameters of a schemas.OPERATIONS entry, on the operation."""
    responses: dict[str, Any] = {}
    for code, (description, media) in entry["responses"].items():
        responses[code] = {"description": description}
        if media:
            responses[code]["content"] = {kind: {"schema": schema} for kind, schema in media.items()}
    responses["default"] = _ERROR
    operation["responses"] = responses
    extra = [{"name": n, "in": "query", "required": False, "schema": s} for n, s in entry["query"].items()]
    extra += [{"name": n, "in": "header", "required": False, "schema": s} for n, s in entry["headers"].items()]
    if extra:
        operation["parameters"] = operation.get("parameters", []) + extra
    if entry["request"]:
        operation["requestBody"] = {"required": entry["required"],
                                    "content": {kind: {"schema": s} for kind, s in entry["request"].items()}}


def document(api: str, routes: Iterable[BaseRoute], server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of one API's routes."""
    title, description = APIS[api]
    described = schemas.OPERATIONS.get(api, {})
    paths: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for path, route in _flatten(routes):
        if api == "http" and _HIDDEN.match(path):
            continue
        methods = sorted((route.methods or {"GET"}) - {"HEAD"})
        names = re.findall(r"\{([^}]+)\}", path)
        parameters = [
            {"name": name, "in": "path", "required": True,
             "schema": dict(_CONVERTORS.get(type(route.param_convertors.get(name)).__name__, {"type": "string"}))}
            for name in names
        ]
        for method in methods:
            summary, details = _summary(route, method, path)
            operation: dict[str, Any] = {
                "operationId": _operation_id(method, path, used),
                "summary": summary,
                "tags": [_tag(path)],
                "responses": {
                    "200": {"description": "Success"},
                    "default": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            }
            if details:
                operation["description"] = details
            if parameters:
                operation["parameters"] = list(parameters)
            if (method, path) in described:
                _described(described[(method, path)], operation)
            elif method in ("POST", "PUT", "PATCH"):  # not described yet: any body
                operation["requestBody"] = {"required": False, "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}},
                }}
            paths.setdefault(path, {})[method.lower()] = operation
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": f"triserve: {title}", "version": __version__, "description": description},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(schemas.COMPONENTS[api])},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


def docs_page(apis: list[tuple[str, str]]) -> str:
    """Swagger UI over the documents (urls: (title, document url)), all assets from this server."""
    import json

    urls = json.dumps([{"name": title, "url": url} for title, url in apis])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>triserve API docs</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({{urls: {urls}, dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout"}});
</script></body></html>
"""
