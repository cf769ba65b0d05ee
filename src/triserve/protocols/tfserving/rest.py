"""TF Serving REST API (--tfserving-rest-port, 8501): model status, metadata, :predict (row and
columnar), :classify and :regress, and Prometheus metrics at /monitoring/prometheus/metrics.

Paths are matched as TF Serving matches them (http_rest_api_handler.cc): case-insensitive
regular expressions over the raw path, names and labels URL-decoded afterwards. The route table
(`TFServingREST.routes`: one `TFRoute` per path shape) is what dispatch() matches with, and what
the console's OpenAPI document of this API is generated from.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Iterator
from urllib.parse import unquote

import numpy as np
from google.protobuf import json_format
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from triserve import datatypes
from triserve.core.dataplane import DataPlane
from triserve.core.model import Model
from triserve.errors import ServerError, invalid
from triserve.options import DEFAULT_HTTP_MAX_INPUT_SIZE, ServerOptions
from triserve.protocols.transport.http import HTTPFrontEnd
from triserve.protocols.tfserving import predecode
from triserve.protocols.tfserving import json_codec as tfjson
from triserve.protocols.transport import offload
from triserve.protocols.transport.bodies import inflate, read_body
from triserve.protocols.transport.json_input import parse_with
from triserve.protocols.tfserving import servables as tfservables
from triserve.protocols.tfserving.servables import (
    HTTP_STATUS,
    Servables,
    infer,
    request_inputs,
    signature,
    signature_def_map,
    tf_code,
)
from triserve.protocols.transport.prometheus import CONTENT_TYPE, buckets, exposition

log = logging.getLogger("triserve")

_VERSION_OR_LABEL = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
POST_PATH = re.compile(r"/v1/models/([^/:]+)" + _VERSION_OR_LABEL + r":(classify|regress|predict)", re.IGNORECASE)
GET_PATH = re.compile(r"/v1/models(?:/([^/:]+))?" + _VERSION_OR_LABEL + r"(?:/(metadata))?", re.IGNORECASE)
METRICS_PATH = "/monitoring/prometheus/metrics"
# A route template's parameters as TF Serving's expressions match them.
_PARAMETER = re.compile(r"\{(name|label|version:int)\}")
_PARAMETER_PATTERN = {"name": r"([^/:]+)", "label": r"([^/:]+)", "version:int": r"(\d+)"}


class TFRoute(Route):
    """One path shape of TF Serving's REST API: a Starlette route (its template, methods and
    typed parameters document it) matched as TF Serving matches, by a case-insensitive regular
    expression over the raw path, its name and label URL-decoded afterwards."""

    def __init__(self, path: str, endpoint: Any, method: str, *, ignore_case: bool = True) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.method = method
        self.names = [p.partition(":")[0] for p in _PARAMETER.findall(path)]
        pattern = "".join(
            _PARAMETER_PATTERN[part] if i % 2 else re.escape(part) for i, part in enumerate(_PARAMETER.split(path))
        )
        self.pattern = re.compile(pattern, re.IGNORECASE if ignore_case else 0)

    def parameters(self, method: str, raw_path: str) -> dict[str, Any] | None:
        """The path's parameters if this route answers it (None otherwise)."""
        if method != self.method or not (match := self.pattern.fullmatch(raw_path)):
            return None
        return {n: int(v) if n == "version" else unquote(v) for n, v in zip(self.names, match.groups())}


def json_response(data: Any, status: int = 200) -> Response:
    return Response(tfjson.dumps(data), status, media_type="application/json")


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def _proto_json(message) -> dict[str, Any]:
    """proto3 JSON as TF Serving prints it: field names as in the .proto, every field, int64 as strings."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class TFServingREST:
    def __init__(self, dataplane: DataPlane, max_input_size: int = DEFAULT_HTTP_MAX_INPUT_SIZE) -> None:
        self.dataplane = dataplane
        self.max_input_size = max_input_size  # --http-max-input-size: bodies, also once inflated
        self.servables = Servables(dataplane)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TFServingCollector(dataplane))
        self.routes = [TFRoute(METRICS_PATH, self.prometheus_metrics, "GET", ignore_case=False)]
        for suffix in ("", "/versions/{version:int}", "/labels/{label}"):
            model = "/v1/models/{name}" + suffix
            self.routes += [
                TFRoute(model, self.model_status, "GET"),
                TFRoute(model + "/metadata", self.model_metadata, "GET"),
                TFRoute(model + ":predict", self.predict_route, "POST"),
                TFRoute(model + ":classify", self.classify_route, "POST"),
                TFRoute(model + ":regress", self.regress_route, "POST"),
            ]

    async def dispatch(self, request: Request) -> Response:
        path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1").partition("?")[0]
        method = request.method
        try:
            for route in self.routes:
                if (parameters := route.parameters(method, path)) is not None:
                    return await route.endpoint(request, **parameters)
            if not path.lower().startswith("/v1/"):
                return error_response(f"Not found: {method} {path}", 404)
            if method == "GET" and (m := GET_PATH.fullmatch(path)) and m.group(1) is None:
                raise invalid("Missing model name in request.")
            raise invalid(f"Malformed request: {method} {path}")
        except ServerError as e:
            return error_response(e.message, HTTP_STATUS[tf_code(e)])
        except Exception as e:  # never a stack trace or a hung connection
            log.exception("unexpected error on %s %s", method, path)
            return error_response("internal error: the server log has the details", 500)  # no reprs or paths

    async def prometheus_metrics(self, request: Request) -> Response:
        """TF Serving's metrics in Prometheus's text format."""
        return Response(exposition(self.registry, []), media_type=CONTENT_TYPE)

    async def model_status(self, request: Request, name: str, version: int | None = None,
                           label: str | None = None) -> Response:
        """The model's status: each version's state and error (GetModelStatus)."""
        return json_response(_proto_json(self.servables.status(name, version, label)))

    async def model_metadata(self, request: Request, name: str, version: int | None = None,
                             label: str | None = None) -> Response:
        """The model's metadata: its model spec and every signature (GetModelMetadata)."""
        return self.metadata(name, version, label)

    async def predict_route(self, request: Request, name: str, version: int | None = None,
                            label: str | None = None) -> Response:
        """Predict: `instances` (row format) or `inputs` (columnar format) through a signature.

        Row requests answer `predictions`, columnar ones `outputs`."""
        return await self.post(request, name, version, label, "predict")

    async def classify_route(self, request: Request, name: str, version: int | None = None,
                             label: str | None = None) -> Response:
        """Classify `examples` (tf.Example features, `context` shared) through a classify signature.

        Answers `results`: for each example, its [label, score] pairs."""
        return await self.post(request, name, version, label, "classify")

    async def regress_route(self, request: Request, name: str, version: int | None = None,
                            label: str | None = None) -> Response:
        """Regress `examples` (tf.Example features, `context` shared) through a regress signature.

        Answers `results`: one value for each example."""
        return await self.post(request, name, version, label, "regress")

    def metadata(self, name: str, version: int | None, label: str | None) -> Response:
        model = self.servables.model(name, version, label)
        spec = _proto_json(self.servables.model_spec(model, signature_name=""))
        # TF Serving nests the SignatureDefMap under "signature_def" twice; clients expect that.
        return json_response({"model_spec": spec, "metadata": {"signature_def": _proto_json(signature_def_map(model))}})

    async def post(self, request: Request, name: str, version: int | None, label: str | None, verb: str) -> Response:
        body = await read_body(request, self.max_input_size, buffer=True)
        body = await inflate(body, request.headers.get("content-encoding"), self.max_input_size)
        reads = predecode.json_inputs_for(self.servables, name, version, label) if verb == "predict" else None
        data = await parse_with(tfjson.parse, body, reads)
        signature_name = data.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid("JSON Value: not formatted correctly. 'signature_name' key must be a string value.")
        model = self.servables.model(name, version, label)
        if verb == "predict":
            return await self.predict(model, data, signature_name)
        return await self.classify_or_regress(model, data, verb, signature_name, len(body))

    async def predict(self, model: Model, data: dict[str, Any], signature_name: str = "") -> Response:
        signature_name, chosen = signature(model, signature_name)
        dtypes, required = request_inputs(model, chosen)
        if "instances" in data and "inputs" in data:
            raise invalid("JSON Value: Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
        if "instances" in data:
            rows, value, read = True, data["instances"], tfjson.instances_to_arrays
        elif "inputs" in data:
            rows, value, read = False, data["inputs"], tfjson.inputs_to_arrays
        else:
            raise invalid("Missing 'inputs' or 'instances' key")
        # Large inputs have their shapes (from the first element of each nesting level) checked
        # against the model before any value is read. Small ones are read first, as TF Serving
        # does: a value of the wrong JSON type is named before a wrong shape.
        if isinstance(value, predecode.JSONValue):  # read in a worker process (a large body)
            shapes, read = value.shapes, predecode.JSONValue.read
        else:
            shapes = tfjson.shapes(value, list(dtypes), rows)
        work = sum(math.prod(shape) for shape in shapes.values())
        if work > offload.OFF_LOOP_SIZE and required <= shapes.keys() <= dtypes.keys() and not model.signatures:
            datatype = {t.name: datatypes.name_of_config(t.data_type) for t in model.config.input}
            model.check_inputs({name: (datatype[name], shape) for name, shape in shapes.items()}, split=True)
        inputs = await offload.run(work, read, value, dtypes, required)
        model = self.servables.model(model.name, model.version)  # again: a reload may have retired it meanwhile
        outputs = await infer(self.dataplane, model, inputs, signature_name=signature_name)
        if "instances" in data:
            return json_response(tfjson.predictions(outputs))
        return json_response(tfjson.columnar(outputs))

    async def classify_or_regress(
        self, model: Model, data: dict[str, Any], verb: str, signature_name: str = "", size: int = 0
    ) -> Response:
        """The request's tf.Examples, serialized, through a classify or regress signature (TF
        Serving's classifier / regressor): `results` as label-score pairs or values. `size`: the
        body's, for how long writing the examples may take."""
        serialized = await offload.run(size, tfjson.examples, data, verb)
        model = self.servables.model(model.name, model.version)  # again: a reload may have retired it meanwhile
        if verb == "regress":
            regression = await tfservables.regress(self.dataplane, model, signature_name, serialized)
            values = np.array([r.value for r in regression.regressions], dtype=np.float32)
            return json_response({"results": tfjson.value(values, "results")})
        classification = await tfservables.classify(self.dataplane, model, signature_name, serialized)
        results = [
            [[c.label, tfjson.value(np.asarray(c.score, dtype=np.float32), "")] for c in row.classes]
            for row in classification.classifications
        ]
        return json_response({"results": results})

    def app(self) -> ASGIApp:
        """Every path and method goes to dispatch(), which matches the route table as TF Serving
        matches paths (Starlette's router would answer paths it cannot match, such as ones with
        newlines, itself). The app's `routes` are that table, for the OpenAPI document."""
        return _App(self)


class _App:
    """The ASGI app of a TFServingREST: requests to its dispatch(), its route table as `routes`."""

    def __init__(self, rest: TFServingREST) -> None:
        self.rest = rest
        self.routes = rest.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = await self.rest.dispatch(Request(scope, receive))
            await response(scope, receive, send)


class TFServingCollector(Collector):
    """TF Serving's metric names, from the same per-model numbers the v2 statistics report."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def collect(self) -> Iterator[Metric]:
        stats = [m.stats for m in self.dataplane.models()]
        name = ":tensorflow:serving:request_count"
        count = Metric(name, "The total number of requests.", "counter")
        totals: dict[str, list[int]] = {}
        for s in stats:  # TF Serving counts per model, not per version
            total = totals.setdefault(s.name, [0, 0])
            total[0] += s.success.count
            total[1] += s.fail.count
        for model_name, (ok, failed) in totals.items():
            count.add_sample(name, {"model_name": model_name, "status": "OK"}, ok)
            count.add_sample(name, {"model_name": model_name, "status": "ERROR"}, failed)
        yield count
        latency = HistogramMetricFamily(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            labels=["model_name", "version", "API"],
        )
        for s in stats:
            latency.add_metric([s.name, str(s.version), "predict"], buckets(s.request_histogram), s.request_histogram.sum_us)
        yield latency
        name = ":tensorflow:core:graph_runs"
        runs = Metric(name, "The number of graph executions used to collect /tensorflow/core/graph_run_time_usecs", "counter")
        for s in stats:
            runs.add_sample(name, {"model_name": s.name, "version": str(s.version)}, s.execution_count)
        yield runs


def model_of(scope: dict[str, Any]) -> str:
    """The model a request's path names, for the access log."""
    path = scope.get("raw_path", b"").decode("latin-1").partition("?")[0]
    match = POST_PATH.fullmatch(path) or GET_PATH.fullmatch(path)
    return unquote(match.group(1) or "") if match else ""


def frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> HTTPFrontEnd:
    app = TFServingREST(dataplane, options.http.max_input_size).app()
    return HTTPFrontEnd(app, options.host, port, options.http, model_of)
