"""`OPTIONS /` (and the deprecated `GET /api-description`): TorchServe's OpenAPI 3.0.1 description
of the port's API, as TorchServe's ApiDescriptionRequestHandler answers it.

The document has TorchServe's shape (`openapi`, `info` "TorchServe APIs", `paths` with its
operationIds, parameters and responses) and lists the paths this server answers on that port:
the inference port `/`, `/ping`, `/predictions/{model_name}[/{model_version}]`; the management
port `/`, `/models`, `/models/{model_name}[/{model_version}]`, `.../set-default`; both
`/api-description` and `/metrics`. (TorchServe also lists its KServe wrappers on the inference
port; triserve serves KServe v2 on its own port, so they are not listed here.)
`OPTIONS /models/{model_name}` on the management port is the one model's management API.
"""

from __future__ import annotations

from typing import Any

VERSION = "0.12.0"  # the TorchServe release whose API this is

_ERROR = {"type": "object", "required": ["code", "type", "message"], "properties": {
    "code": {"type": "integer", "description": "Error code."},
    "type": {"type": "string", "description": "Error type."},
    "message": {"type": "string", "description": "Error message."},
}}
_STATUS = {"type": "object", "required": ["status"],
           "properties": {"status": {"type": "string", "description": "Error type."}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(code: str, description: str) -> tuple[str, dict[str, Any]]:
    return code, {"description": description, "content": _json(_ERROR)}


def _operation(operation_id: str, description: str, parameters: list[dict[str, Any]],
               responses: list[tuple[str, dict[str, Any]]], **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"description": description, "operationId": operation_id}
    if parameters:
        op["parameters"] = parameters
    op.update(extra)
    op["responses"] = dict(responses)
    return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"in": "path", "name": name, "description": description, "required": True, "schema": {"type": "string"}}


def _query(name: str, description: str, kind: str = "string", default: Any = None,
           required: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind}
    if default is not None:
        schema["default"] = default
    param = {"in": "query", "name": name, "description": description, "schema": schema}
    if required:
        param["required"] = True
    return param


def _ok(description: str, schema: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    return "200", {"description": description, "content": _json(schema or _STATUS)}


def _description_path(operation_id: str, legacy: bool) -> dict[str, Any]:
    schema = {"type": "object", "required": ["openapi", "info", "paths"], "properties": {
        "openapi": {"type": "string"}, "info": {"type": "object"}, "paths": {"type": "object"}}}
    op = _operation(operation_id, "Get openapi description.", [],
                    [_ok("A openapi 3.0.1 descriptor", schema), _error("500", "Internal Server Error")],
                    **({"deprecated": True} if legacy else {}))
    return {"get": op} if legacy else {"options": op}


def _ping() -> dict[str, Any]:
    schema = {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "description": "Overall status of the TorchServe."}}}
    return {"get": _operation("ping", "Get TorchServe status.", [],
                              [_ok("TorchServe status", schema), _error("500", "Internal Server Error")])}


def _predictions(version: bool) -> dict[str, Any]:
    parameters = [_path_param("model_name", "Name of model.")]
    if version:
        parameters.append(_path_param("model_version", "Name of model version."))
    body = {"description": "Input data format is defined by each model.", "required": True,
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}
    op = _operation(
        "version_predictions" if version else "predictions",
        "Predictions entry point to get inference using " + ("specific" if version else "default") + " model version.",
        parameters,
        [("200", {"description": "Output data format is defined by each model.",
                  "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}),
         _error("404", "Model not found or Model Version not found"), _error("500", "Internal Server Error"),
         _error("503", "No worker is available to serve request")],
        requestBody=body)
    return {"post": op}


def _metrics() -> dict[str, Any]:
    return {"get": _operation(
        "metrics", "Get TorchServe application metrics in prometheus format.",
        [_query("name[]", "Names of metrics to filter")],
        [("200", {"description": "TorchServe application metrics",
                  "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "object"}}}}),
         _error("500", "Internal Server Error")])}


def _models() -> dict[str, Any]:
    listing = {"type": "object", "required": ["models"], "properties": {
        "nextPageToken": {"type": "string", "description": "Use this parameter in next list call to fetch the next page."},
        "models": {"type": "array", "items": {"type": "object", "required": ["modelName", "modelUrl"], "properties": {
            "modelName": {"type": "string", "description": "Name of the model."},
            "modelUrl": {"type": "string", "description": "URL of the model."}}}}}}
    register_parameters = [
        _query("url", "Model archive download url, support local file or HTTP(s) protocol.", required=True),
        _query("model_name", "Name of model. This value will override modelName in MANIFEST.json if present."),
        _query("handler", "Inference handler entry-point. This value will override handler in MANIFEST.json if present."),
        _query("runtime", "Runtime for the model custom service code. This value will override runtime in"
                          " MANIFEST.json if present."),
        _query("batch_size", "Inference batch size, default: 1.", "integer", 1),
        _query("max_batch_delay", "Maximum delay for batch aggregation, default: 100.", "integer", 100),
        _query("response_timeout", "Maximum time, in seconds, the TorchServe waits for a response from the model"
                                   " inference code, default: 120.", "integer", 120),
        _query("startup_timeout", "Maximum time, in seconds, the TorchServe waits for the model to startup/initialize,"
                                  " default: 120.", "integer", 120),
        _query("initial_workers", "Number of initial workers, default: 0.", "integer", 0),
        _query("synchronous", "Decides whether creation of worker synchronous or not, default: true.", "boolean", True),
    ]
    return {
        "get": _operation("listModels", "List registered models in TorchServe.", [
            _query("limit", "Use this parameter to specify the maximum number of items to return. When this value is"
                            " present, TorchServe does not return more than the specified number of items, but it might"
                            " return fewer. This value is optional. If you include a value, it must be between 1 and"
                            " 1000, inclusive. If you do not include a value, it defaults to 100.", "integer", 100),
            _query("next_page_token", "The token to retrieve the next set of results. TorchServe provides the token"
                                      " when the response from a previous call has more results than the maximum page"
                                      " size."),
        ], [_ok("OK", listing), _error("500", "Internal Server Error")]),
        "post": _operation("registerModel", "Register a new model in TorchServe.", register_parameters, [
            _ok("Model registered"), ("202", {"description": "Accepted", "content": _json(_STATUS)}),
            _error("210", "Partial Success"), _error("400", "Bad request"), _error("404", "Model not found"),
            _error("409", "Model already registered"), _error("500", "Internal Server Error"),
        ]),
    }


def _model(version: bool) -> dict[str, Any]:
    parameters = [_path_param("model_name", "Name of model to describe.")]
    if version:
        parameters.append(_path_param("model_version", "Version of model to describe."))
    what = "specific version of a model" if version else "default version of a model"
    describe = _operation("describeModel" + ("Version" if version else ""), f"Provides detailed information about the {what}.",
                          parameters, [_ok("OK", {"type": "array", "items": {"type": "object"}}),
                                       _error("404", "Model not found"), _error("500", "Internal Server Error")])
    scale_parameters = [*parameters,
                        _query("min_worker", "Minimum number of worker processes.", "integer", 1),
                        _query("max_worker", "Maximum number of worker processes.", "integer", 1),
                        _query("number_gpu", "Number of GPU worker processes to create.", "integer", 0),
                        _query("synchronous", "Decides whether the call is synchronous or not, default: false.",
                               "boolean", False),
                        _query("timeout", "Waiting up to the specified wait time if necessary for a worker to complete"
                                          " all pending requests. Use 0 to terminate backend worker process immediately."
                                          " Use -1 for wait infinitely.", "integer", -1)]
    scale = _operation("setAutoScale" + ("Version" if version else ""),
                       f"Configure number of workers for a {what}. This is an asynchronous call by default."
                       " Caller need to call describeModel to check if the model workers has been changed.",
                       scale_parameters,
                       [_ok("OK"), ("202", {"description": "Accepted", "content": _json(_STATUS)}),
                        _error("210", "Partial Success"), _error("400", "Bad request"),
                        _error("404", "Model not found"), _error("500", "Internal Server Error")])
    unregister = _operation("unregisterModel" + ("Version" if version else ""),
                            f"Unregister the {what} in TorchServe.", parameters[:],
                            [_ok("OK"), _error("404", "Model not found"), _error("408", "Request Timeout Error"),
                             _error("500", "Internal Server Error")])
    return {"get": describe, "put": scale, "delete": unregister}


def _set_default() -> dict[str, Any]:
    parameters = [_path_param("model_name", "Name of model whose default version needs to be updated."),
                  _path_param("model_version", "Version of model to be set as default version for the model")]
    return {"put": _operation("setDefault", "Set default version of a model", parameters,
                              [_ok("Default vesion succsesfully updated for model"),
                               _error("404", "Model not found"), _error("500", "Internal Server Error")])}


def _document(title: str, paths: dict[str, Any], version: str = VERSION) -> dict[str, Any]:
    info = {"title": title, "description": "TorchServe is a flexible and easy to use tool for serving deep"
                                           " learning models", "version": version}
    if title != "TorchServe APIs":
        del info["description"]
    return {"openapi": "3.0.1", "info": info, "paths": paths}


def inference_api() -> dict[str, Any]:
    return _document("TorchServe APIs", {
        "/": _description_path("apiDescription", False),
        "/ping": _ping(),
        "/predictions/{model_name}": _predictions(False),
        "/predictions/{model_name}/{model_version}": _predictions(True),
        "/api-description": _description_path("api-description", True),
        "/metrics": _metrics(),
    })


def management_api() -> dict[str, Any]:
    return _document("TorchServe APIs", {
        "/": _description_path("apiDescription", False),
        "/models": _models(),
        "/models/{model_name}": _model(False),
        "/models/{model_name}/{model_version}": _model(True),
        "/models/{model_name}/{model_version}/set-default": _set_default(),
        "/api-description": _description_path("api-description", True),
        "/metrics": _metrics(),
    })


def model_management_api(name: str) -> dict[str, Any]:
    """`OPTIONS /models/{name}`: the management API of one model."""
    return _document(f"RESTful Management API for: {name}", {
        "/models/{model_name}": _model(False),
        "/models/{model_name}/{model_version}": _model(True),
        "/models/{model_name}/{model_version}/set-default": _set_default(),
    })
