"""The request and response bodies of every documented operation, as JSON Schema (OpenAPI 3.1).

`OPERATIONS[api][(METHOD, path)]` is what one route takes and answers; openapi.document() puts it
on the operation its route table produced, and a route with no entry here is documented with a
generic body (tests/console/test_openapi.py requires an entry for every route of every API, and
schemathesis checks the server's answers against these schemas). The shapes follow each
protocol's own description: KServe's open inference protocol (v2) and Triton's extensions,
TorchServe's inference and management APIs, TF Serving's api_rest.md; and what triserve answers.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Schema], required: list[str] | tuple[str, ...] = (), **more: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **more}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: Schema, **more: Any) -> Schema:
    return {"type": "array", "items": items, **more}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
ANY_JSON: Schema = {"type": ["object", "array", "string", "number", "integer", "boolean", "null"]}
JSON = "application/json"
BINARY = "application/octet-stream"
TEXT = "text/plain"

# A response: (description, {media type: schema}) (no media types: an empty body).
Answer = tuple[str, dict[str, Schema]]


def op(request: dict[str, Schema] | None = None, required: bool = False, query: dict[str, Schema] | None = None,
       headers: dict[str, Schema] | None = None, **responses: Answer) -> dict[str, Any]:
    """One operation: request body by media type, query parameters, and answers by status code
    (keyword `_200`, `_404`, ...; `default` is the protocol's error)."""
    return {"request": request, "required": required, "query": query or {}, "headers": headers or {},
            "responses": {code.lstrip("_"): answer for code, answer in responses.items()}}


# -- KServe v2 and Triton's extensions -----------------------------------------------------------
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16"]
_PARAMETERS: Schema = {"type": "object", "description": "Parameters (string, number or boolean values; Triton's"
                       " extensions: binary_data, binary_data_size, classification, shared_memory_region, ...)",
                       "additionalProperties": {"type": ["string", "number", "integer", "boolean"]}}
_SHAPE: Schema = array({"type": "integer", "minimum": -1})
_DURATION = obj({"count": INTEGER, "ns": INTEGER}, ["count", "ns"])
V2_SCHEMAS: dict[str, Schema] = {
    "Error": obj({"error": STRING}, ["error"]),
    "Parameters": _PARAMETERS,
    "TensorData": {"description": "Tensor contents in row-major order, flat or nested as the shape"
                   " (BYTES elements as strings; BOOL as booleans)",
                   "type": "array", "items": {"anyOf": [{"type": ["number", "integer", "string", "boolean"]},
                                                        ref("TensorData")]}},
    "RequestInput": obj({"name": STRING, "shape": _SHAPE, "datatype": {"type": "string", "enum": DATATYPES},
                         "parameters": ref("Parameters"), "data": ref("TensorData")},
                        ["name", "shape", "datatype"],
                        description="An input tensor. `data` is absent when the contents follow the JSON as"
                        " binary (parameter binary_data_size) or are in shared memory (shared_memory_region)."),
    "RequestOutput": obj({"name": STRING, "parameters": ref("Parameters")}, ["name"]),
    "InferRequest": obj({"id": STRING, "parameters": ref("Parameters"),
                         "inputs": array(ref("RequestInput")), "outputs": array(ref("RequestOutput"))},
                        ["inputs"]),
    "ResponseOutput": obj({"name": STRING, "shape": _SHAPE, "datatype": {"type": "string", "enum": DATATYPES},
                           "parameters": ref("Parameters"), "data": ref("TensorData")},
                          ["name", "shape", "datatype"],
                          description="An output tensor; `data` is absent when it is sent as binary after the"
                          " JSON (parameter binary_data_size) or written to shared memory."),
    "InferResponse": obj({"model_name": STRING, "model_version": STRING, "id": STRING,
                          "parameters": ref("Parameters"), "outputs": array(ref("ResponseOutput"))},
                         ["model_name", "outputs"]),
    "TensorMetadata": obj({"name": STRING, "datatype": {"type": "string", "enum": DATATYPES}, "shape": _SHAPE},
                          ["name", "datatype", "shape"]),
    "ModelMetadata": obj({"name": STRING, "versions": array(STRING), "platform": STRING,
                          "inputs": array(ref("TensorMetadata")), "outputs": array(ref("TensorMetadata"))},
                         ["name", "platform", "inputs", "outputs"]),
    "ServerMetadata": obj({"name": STRING, "version": STRING, "extensions": array(STRING)},
                          ["name", "version", "extensions"]),
    "ModelConfig": obj({"name": STRING, "platform": STRING, "backend": STRING, "max_batch_size": INTEGER,
                        "input": array({"type": "object"}), "output": array({"type": "object"}),
                        "instance_group": array({"type": "object"}), "dynamic_batching": {"type": "object"},
                        "parameters": {"type": "object"}},
                       ["name"], description="The model configuration (model_config.proto) as JSON."),
    "RepositoryIndexRequest": obj({"ready": BOOLEAN, "repository_name": STRING}),
    "RepositoryIndex": array(obj({"name": STRING, "version": STRING, "state": STRING, "reason": STRING}, ["name"])),
    "LoadRequest": obj({"parameters": obj({"config": {"type": "string", "description": "model configuration JSON"}},
                                          additionalProperties={"type": ["string", "number", "boolean"]},
                                          description="`config` and `file:<path>` (base64 contents)")}),
    "UnloadRequest": obj({"parameters": obj({"unload_dependents": BOOLEAN},
                                            additionalProperties={"type": ["string", "number", "boolean"]})}),
    "Duration": _DURATION,
    "ModelStatistics": obj({
        "name": STRING, "version": STRING, "last_inference": INTEGER, "inference_count": INTEGER,
        "execution_count": INTEGER,
        "inference_stats": {"type": "object", "additionalProperties": ref("Duration")},
        "response_stats": {"type": "object"},
        "batch_stats": array(obj({"batch_size": INTEGER, "compute_input": ref("Duration"),
                                  "compute_infer": ref("Duration"), "compute_output": ref("Duration")},
                                 ["batch_size"])),
        "memory_usage": array({"type": "object"}),
    }, ["name", "version", "inference_count", "execution_count", "inference_stats"]),
    "Statistics": obj({"model_stats": array(ref("ModelStatistics"))}, ["model_stats"]),
    "SystemRegion": obj({"name": STRING, "key": STRING, "offset": INTEGER, "byte_size": INTEGER},
                        ["name", "key", "offset", "byte_size"]),
    "SystemRegister": obj({"key": STRING, "offset": {"type": "integer", "minimum": 0},
                           "byte_size": {"type": "integer", "minimum": 0}}, ["key", "byte_size"]),
    "CudaRegion": obj({"name": STRING, "device_id": INTEGER, "byte_size": INTEGER}, ["name"]),
    "CudaRegister": obj({"raw_handle": obj({"b64": STRING}, ["b64"]), "device_id": INTEGER,
                         "byte_size": INTEGER}, ["raw_handle", "device_id", "byte_size"]),
    "TraceSettings": {"type": "object", "description": "Trace settings (trace_level, trace_rate, trace_count,"
                      " log_frequency, trace_file, trace_mode, ...): strings or lists of strings; null clears"
                      " a model's setting.",
                      "additionalProperties": {"anyOf": [STRING, array(STRING)]}},
    "TraceSettingsUpdate": {"type": "object", "additionalProperties": {"anyOf": [STRING, array(STRING),
                                                                                   {"type": "null"}]}},
    "LogSettings": obj({"log_file": STRING, "log_info": BOOLEAN, "log_warning": BOOLEAN, "log_error": BOOLEAN,
                        "log_verbose_level": INTEGER, "log_format": STRING}),
    # the console's JSON endpoints
    "ConsoleModel": obj({"name": STRING, "source": STRING, "state": STRING, "reason": STRING,
                         "versions": array(obj({"version": INTEGER, "state": STRING, "reason": STRING})),
                         "ready_versions": array(INTEGER), "default_version": {"type": ["integer", "null"]},
                         "protocols": array(STRING), "classifier": {"type": ["string", "null"]},
                         "platform": STRING, "backend": STRING, "instances": INTEGER, "max_batch_size": INTEGER,
                         "batch_cap": INTEGER, "inputs": array(ref("TensorMetadata")),
                         "outputs": array(ref("TensorMetadata")), "requests": INTEGER},
                        ["name", "source", "state", "versions", "protocols"]),
    "ConsoleModels": obj({"server": obj({"name": STRING, "version": STRING, "ready": BOOLEAN,
                                         "control_mode": STRING, "started": NUMBER}),
                          "models": array(ref("ConsoleModel"))}, ["server", "models"]),
    "ConsoleModelDetail": obj({"model": ref("ConsoleModel"), "config_pbtxt": STRING, "config": ref("ModelConfig"),
                               "metadata": {"type": "object"}, "labels": {"type": "object"},
                               "statistics": {"type": "object"}}, ["model"]),
    "ConsoleTraffic": obj({"interval_s": NUMBER, "samples": array({"type": "object"}), "totals": {"type": "object"}},
                          ["interval_s", "samples", "totals"]),
    "ConsoleClassification": obj({
        "results": array(obj({"model": STRING, "version": INTEGER, "kind": STRING, "latency_ms": NUMBER,
                              "error": STRING,
                              "top": array(obj({"index": INTEGER, "label": STRING, "probability": NUMBER},
                                               ["index", "label", "probability"]))},
                             ["model", "kind"])),
        "skipped": array(obj({"model": STRING, "reason": STRING}, ["model", "reason"]))}, ["results", "skipped"]),
}
_V2_JSON_ERROR = ("Error", {JSON: ref("Error")})
_EMPTY_OK: Answer = ("OK (an empty body)", {})
_NOT_READY: Answer = ("Not ready", {JSON: ref("Error")})
_NO_CONTROL: Answer = ("The model control mode does not allow it (Triton's UNAVAILABLE)", {JSON: ref("Error")})
_UNSUPPORTED: Answer = ("Not enabled on this server (Triton's UNSUPPORTED)", {JSON: ref("Error")})


def _json(description: str, name: str) -> Answer:
    return description, {JSON: ref(name)}


def _v2_operations() -> dict[tuple[str, str], dict[str, Any]]:
    ops: dict[tuple[str, str], dict[str, Any]] = {
        ("GET", "/v2/health/live"): op(_200=("Live (an empty body)", {})),
        ("GET", "/v2/health/ready"): op(_200=("Ready (an empty body)", {}), _503=_NOT_READY),
        ("GET", "/v2"): op(_200=_json("Server metadata", "ServerMetadata")),
        ("GET", "/v2/models/stats"): op(_200=_json("Every model's statistics", "Statistics")),
        ("POST", "/v2/repository/index"): op({JSON: ref("RepositoryIndexRequest")},
                                             _200=_json("The repository index", "RepositoryIndex")),
        ("POST", "/v2/repository/models/{model}/load"): op({JSON: ref("LoadRequest")}, _200=_EMPTY_OK,
                                                          _503=_NO_CONTROL),
        ("POST", "/v2/repository/models/{model}/unload"): op({JSON: ref("UnloadRequest")}, _200=_EMPTY_OK,
                                                            _503=_NO_CONTROL),
        ("GET", "/v2/trace/setting"): op(_200=_json("Trace settings", "TraceSettings")),
        ("POST", "/v2/trace/setting"): op({JSON: ref("TraceSettingsUpdate")}, True,
                                          _200=_json("Trace settings", "TraceSettings")),
        ("GET", "/v2/models/{model}/trace/setting"): op(_200=_json("Trace settings", "TraceSettings")),
        ("POST", "/v2/models/{model}/trace/setting"): op({JSON: ref("TraceSettingsUpdate")}, True,
                                                         _200=_json("Trace settings", "TraceSettings")),
        ("GET", "/v2/logging"): op(_200=_json("Log settings", "LogSettings")),
        ("POST", "/v2/logging"): op({JSON: ref("LogSettings")}, True, _200=_json("Log settings", "LogSettings"),
                                    _501=("A setting this server does not change at run time (log_file)",
                                          {JSON: ref("Error")})),
        ("GET", "/console/api/models"): op(_200=_json("Every model", "ConsoleModels")),
        ("GET", "/console/api/models/{model}"): op(_200=_json("One model", "ConsoleModelDetail")),
        ("GET", "/console/api/traffic"): op(query={"since": NUMBER},
                                            _200=_json("Traffic samples", "ConsoleTraffic")),
        ("POST", "/console/api/classify"): op({BINARY: {"type": "string", "contentMediaType": "image/*"}}, True,
                                              _200=_json("Top 5 of every classifier", "ConsoleClassification")),
    }
    for verb in ("load", "reload", "unload"):
        ops[("POST", "/console/api/models/{model}/" + verb)] = op(_200=_json("The model", "ConsoleModel"),
                                                                  _503=_NO_CONTROL)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        ops[("GET", prefix)] = op(_200=_json("Model metadata", "ModelMetadata"))
        ops[("GET", prefix + "/ready")] = op(_200=("Ready (an empty body)", {}), _503=_NOT_READY)
        ops[("GET", prefix + "/config")] = op(_200=_json("Model configuration", "ModelConfig"))
        ops[("GET", prefix + "/stats")] = op(_200=_json("The model's statistics", "Statistics"))
        ops[("POST", prefix + "/infer")] = op(
            {JSON: ref("InferRequest"),
             BINARY: {"type": "string", "contentMediaType": BINARY,
                      "description": "Triton's binary tensor extension: the JSON request (its length in"
                      " Inference-Header-Content-Length), then the inputs' bytes"}},
            True, headers={"Inference-Header-Content-Length": {"type": "integer", "minimum": 0}},
            _200=("The inference response", {
                JSON: ref("InferResponse"),
                BINARY: {"type": "string", "contentMediaType": BINARY,
                         "description": "The JSON response (its length in Inference-Header-Content-Length),"
                         " then binary outputs"}}),
            _503=_NOT_READY)
    for kind, region, register in (("system", "SystemRegion", "SystemRegister"),
                                   ("cuda", "CudaRegion", "CudaRegister")):
        for prefix in (f"/v2/{kind}sharedmemory", f"/v2/{kind}sharedmemory/region/{{region}}"):
            ops[("GET", prefix + "/status")] = op(_200=("Registered regions", {JSON: array(ref(region))}),
                                                  _501=_UNSUPPORTED)
            ops[("POST", prefix + "/unregister")] = op(_200=_EMPTY_OK, _501=_UNSUPPORTED)
        ops[("POST", f"/v2/{kind}sharedmemory/region/{{region}}/register")] = op({JSON: ref(register)}, True,
                                                                               _200=_EMPTY_OK, _501=_UNSUPPORTED)
        ops[("POST", f"/v2/{kind}sharedmemory/register")] = op({JSON: ref(register)}, True, _200=_EMPTY_OK,
                                                              _501=_UNSUPPORTED)
    return ops


# -- TorchServe ----------------------------------------------------------------------------------
TORCHSERVE_SCHEMAS: dict[str, Schema] = {
    "Error": obj({"code": INTEGER, "type": STRING, "message": STRING}, ["code", "type", "message"]),
    "Status": obj({"status": STRING}, ["status"]),
    "ApiDescription": obj({"openapi": STRING, "info": {"type": "object"}, "paths": {"type": "object"}},
                          ["openapi", "info", "paths"]),
    "Prediction": {**ANY_JSON, "description": "What the model's handler answers: JSON for"
                   " one request (a list when the body held several rows)"},
    "ModelList": obj({"nextPageToken": STRING, "models": array(obj({"modelName": STRING, "modelUrl": STRING},
                                                                   ["modelName", "modelUrl"]))}, ["models"]),
    "Worker": obj({"id": STRING, "startTime": STRING, "status": STRING, "memoryUsage": INTEGER, "pid": INTEGER,
                   "gpu": BOOLEAN, "gpuUsage": STRING}, ["id", "status"]),
    "ModelDescription": obj({
        "modelName": STRING, "modelVersion": STRING, "modelUrl": STRING, "engine": STRING, "runtime": STRING,
        "minWorkers": INTEGER, "maxWorkers": INTEGER, "batchSize": INTEGER, "maxBatchDelay": INTEGER,
        "responseTimeout": INTEGER, "startupTimeout": INTEGER, "deviceType": STRING, "loadedAtStartup": BOOLEAN,
        "workers": array(ref("Worker")), "status": STRING, "reason": STRING,
        "jobQueueStatus": obj({"remainingCapacity": INTEGER, "pendingRequests": INTEGER}),
    }, ["modelName", "modelVersion", "modelUrl", "minWorkers", "maxWorkers", "workers"]),
    "ModelDescriptions": array(ref("ModelDescription")),
}
_TS_STATUS = _json("Done", "Status")
_TS_ACCEPTED: Answer = ("Accepted: the change goes on in the background", {JSON: ref("Status")})
_PREDICTION_BODY = {JSON: ANY_JSON, BINARY: {"type": "string", "contentMediaType": BINARY},
                    "text/plain": STRING, "multipart/form-data": {"type": "object"}}


def _torchserve_inference_operations() -> dict[tuple[str, str], dict[str, Any]]:
    ops = {
        ("OPTIONS", "/"): op(_200=_json("TorchServe's OpenAPI 3.0.1 description", "ApiDescription")),
        ("GET", "/api-description"): op(_200=_json("TorchServe's OpenAPI 3.0.1 description", "ApiDescription")),
        ("GET", "/ping"): op(_200=_json("Healthy", "Status"), _500=_json("Unhealthy", "Status")),
        ("POST", "/ping"): op(_200=_json("Healthy", "Status"), _500=_json("Unhealthy", "Status")),
    }
    for path in ("/predictions/{model}", "/predictions/{model}/{version}"):
        for method in ("POST", "PUT"):
            ops[(method, path)] = op(_PREDICTION_BODY, _200=("The handler's answer", {
                JSON: ref("Prediction"), BINARY: {"type": "string", "contentMediaType": BINARY}, TEXT: STRING}),
                _503=("No worker is ready", {JSON: ref("Error")}))
    return ops


_REGISTER_QUERY = {
    "url": STRING, "model_name": STRING, "handler": STRING,
    "runtime": {"type": "string", "enum": ["python", "python3"]},
    "batch_size": INTEGER, "max_batch_delay": INTEGER, "initial_workers": INTEGER, "synchronous": BOOLEAN,
    "response_timeout": INTEGER, "startup_timeout": INTEGER,
}
_SCALE_QUERY = {"min_worker": {"type": "integer", "minimum": 0}, "max_worker": {"type": "integer", "minimum": 0},
                "synchronous": BOOLEAN}


def _torchserve_management_operations() -> dict[tuple[str, str], dict[str, Any]]:
    description = _json("TorchServe's OpenAPI 3.0.1 description", "ApiDescription")
    ops = {
        ("OPTIONS", "/"): op(_200=description),
        ("GET", "/api-description"): op(_200=description),
        ("OPTIONS", "/models/{model}"): op(_200=description),
        ("OPTIONS", "/models/{model}/{version}"): op(_200=description),
        ("GET", "/models"): op(query={"limit": INTEGER, "next_page_token": INTEGER},
                               _200=_json("A page of models", "ModelList")),
        ("POST", "/models"): op(query=_REGISTER_QUERY, _200=_TS_STATUS, _202=_TS_ACCEPTED),
        ("PUT", "/models/{model}/{version}/set-default"): op(_200=_TS_STATUS),
        ("GET", "/token"): op(query={"type": {"type": "string", "enum": ["management", "inference"]}},
                              _200=_TS_STATUS),
    }
    for path in ("/models/{model}", "/models/{model}/{version}"):
        ops[("GET", path)] = op(_200=_json("The model's versions", "ModelDescriptions"))
        ops[("PUT", path)] = op(query=_SCALE_QUERY, _200=_TS_STATUS, _202=_TS_ACCEPTED,
                                _500=("Workers could not start (TorchServe's code)", {JSON: ref("Error")}))
        ops[("DELETE", path)] = op(_200=_TS_STATUS)
    return ops


# -- TF Serving REST -----------------------------------------------------------------------------
_TF_TENSOR_SHAPE = obj({"dim": array(obj({"size": STRING, "name": STRING})), "unknown_rank": BOOLEAN})
_TF_TENSOR_INFO = obj({"dtype": STRING, "tensor_shape": _TF_TENSOR_SHAPE, "name": STRING})
TFSERVING_SCHEMAS: dict[str, Schema] = {
    "Error": obj({"error": STRING}, ["error"]),
    "ModelVersionStatus": obj({
        "version": {"type": "string", "description": "int64, as a string"},
        "state": {"type": "string", "enum": ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
        "status": obj({"error_code": STRING, "error_message": STRING}),
    }, ["version", "state", "status"]),
    "ModelStatus": obj({"model_version_status": array(ref("ModelVersionStatus"))}, ["model_version_status"]),
    "ModelSpec": obj({"name": STRING, "signature_name": STRING, "version": {"type": ["string", "null"]},
                      "version_label": STRING}, ["name"]),
    "SignatureDef": obj({"inputs": {"type": "object", "additionalProperties": _TF_TENSOR_INFO},
                         "outputs": {"type": "object", "additionalProperties": _TF_TENSOR_INFO},
                         "method_name": STRING, "defaults": {"type": "object"}}, ["inputs", "outputs", "method_name"]),
    "ModelMetadata": obj({"model_spec": ref("ModelSpec"), "metadata": obj({
        "signature_def": obj({"signature_def": {"type": "object", "additionalProperties": ref("SignatureDef")}},
                             ["signature_def"])}, ["signature_def"])}, ["model_spec", "metadata"]),
    "Value": {"description": "A tensor as JSON: a scalar, nested lists, strings for DT_STRING and"
              " {\"b64\": ...} for binary strings",
              "anyOf": [{"type": ["number", "integer", "string", "boolean"]}, obj({"b64": STRING}, ["b64"]),
                        array(ref("Value"))]},
    "PredictRequest": {
        "description": "Row format (`instances`: a list of inputs, or of objects of named inputs) or columnar"
                       " format (`inputs`: a tensor, or an object of named tensors); exactly one of the two.",
        "type": "object",
        "properties": {"signature_name": STRING, "instances": array(ref("Value")),
                       "inputs": {"anyOf": [ref("Value"), {"type": "object", "additionalProperties": ref("Value")}]}},
        "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
    },
    "PredictResponse": {
        "description": "`predictions` (row format) or `outputs` (columnar format), as the request",
        "type": "object",
        "properties": {"predictions": array({"anyOf": [ref("Value"), {"type": "object",
                                                                       "additionalProperties": ref("Value")}]}),
                       "outputs": {"anyOf": [ref("Value"), {"type": "object", "additionalProperties": ref("Value")}]}},
        "oneOf": [{"required": ["predictions"]}, {"required": ["outputs"]}],
    },
    "Example": {"type": "object", "description": "A tf.Example: feature name -> value or list of values",
                "additionalProperties": ref("Value")},
    "ExamplesRequest": obj({"signature_name": STRING, "context": ref("Example"), "examples": array(ref("Example"))},
                           ["examples"]),
    "ClassifyResponse": obj({"results": array(array({"type": "array", "items": {"type": ["string", "number"]},
                                                     "minItems": 2, "maxItems": 2, "description": "[label, score]"}),
                                              description="each example's [label, score] pairs")}, ["results"]),
    "RegressResponse": obj({"results": array(NUMBER, description="one value per example")}, ["results"]),
}


def _tfserving_operations() -> dict[tuple[str, str], dict[str, Any]]:
    ops: dict[tuple[str, str], dict[str, Any]] = {
        ("GET", "/monitoring/prometheus/metrics"): op(_200=("Prometheus text format", {TEXT: STRING})),
    }
    for suffix in ("", "/versions/{version}", "/labels/{label}"):
        model = "/v1/models/{name}" + suffix
        ops[("GET", model)] = op(_200=_json("The model's status", "ModelStatus"))
        ops[("GET", model + "/metadata")] = op(_200=_json("The model's metadata", "ModelMetadata"))
        ops[("POST", model + ":predict")] = op({JSON: ref("PredictRequest")}, True,
                                               _200=_json("Predictions", "PredictResponse"),
                                               _503=("Not available", {JSON: ref("Error")}))
        ops[("POST", model + ":classify")] = op({JSON: ref("ExamplesRequest")}, True,
                                                _200=_json("Classes and scores", "ClassifyResponse"),
                                                _503=("Not available", {JSON: ref("Error")}))
        ops[("POST", model + ":regress")] = op({JSON: ref("ExamplesRequest")}, True,
                                               _200=_json("Values", "RegressResponse"),
                                               _503=("Not available", {JSON: ref("Error")}))
    return ops


COMPONENTS: dict[str, dict[str, Schema]] = {
    "http": V2_SCHEMAS,
    "tfserving_rest": TFSERVING_SCHEMAS,
    "torchserve_inference": TORCHSERVE_SCHEMAS,
    "torchserve_management": TORCHSERVE_SCHEMAS,
}
OPERATIONS: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
    "http": _v2_operations(),
    "tfserving_rest": _tfserving_operations(),
    "torchserve_inference": _torchserve_inference_operations(),
    "torchserve_management": _torchserve_management_operations(),
}
