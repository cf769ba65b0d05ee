"""The console's JSON endpoints and its page, all read through the data plane.

GET  /                                 the console page (static HTML, JS and CSS from this package)
GET  /console/api/models               every model: state, reason, versions, platform, batching, protocols
GET  /console/api/models/{model}       one model: config (pbtxt and JSON), metadata, labels, statistics
GET  /console/api/traffic?since=T      the sampled traffic history (1-s samples after epoch time T)
POST /console/api/classify             an image (the body) -> top-5 from every ready image classifier
POST /console/api/models/{model}/load|unload|reload
                                       the repository API's lifecycle (explicit control mode only)
GET  /openapi.json, /openapi/{api}.json  OpenAPI 3.1 documents generated from the route tables
GET  /docs                             Swagger UI over them (assets from swagger-ui-bundle-v2)
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from google.protobuf import json_format, text_format
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from triserve import __version__, datatypes
from triserve.client.classify import NotAnImageClassifier, handler_of, model_input_spec
from triserve.console import openapi
from triserve.console.sampler import Sampler
from triserve.core.dataplane import DataPlane
from triserve.core.model import Model
from triserve.core.scheduler import Scheduler
from triserve.core.types import InferRequest
from triserve.errors import ServerError, invalid
from triserve.options import FRONTENDS, DEFAULT_HTTP_MAX_INPUT_SIZE
from triserve.protocols.transport import offload
from triserve.protocols.transport.bodies import read_body
from triserve.vision import images
from triserve.vision.topk import label, top_indices

TOP = 5
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
DOCS_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
}
# Front ends that reach a decoupled model: only streams carry its many responses.
STREAMING = {"grpc"}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def _docs_asset(name: str) -> bytes:
    import swagger_ui_bundle  # swagger-ui-bundle-v2: Swagger UI 5 (renders OpenAPI 3.1)

    return (Path(swagger_ui_bundle.swagger_ui_path) / name).read_bytes()


def _static(name: str) -> bytes:
    return resources.files("triserve.console").joinpath("static", name).read_bytes()


def tensor_metadata(model: Model) -> dict[str, Any]:
    """The model's v2 metadata: name, versions, platform, inputs and outputs with their shapes."""
    batch = [-1] if model.max_batch_size > 0 else []

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": datatypes.name_of_config(t.data_type), "shape": batch + list(t.dims)}
                for t in items]

    return {"name": model.name, "versions": [model.version_str], "platform": model.platform,
            "inputs": tensors(model.config.input), "outputs": tensors(model.config.output)}


def config_dict(model: Model) -> dict[str, Any]:
    return json_format.MessageToDict(model.config, preserving_proto_field_name=True)


class Classifier:
    """How an image reaches one model: 'tensor' (resized pixels, as `triserve classify`),
    'imagenet' (a TorchServe image_classifier archive: its handler's transform and softmax) or
    'bytes' (the encoded file, for a model that decodes images itself)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        metadata, config = tensor_metadata(model), config_dict(model)
        inputs, outputs = metadata["inputs"], metadata["outputs"]
        if len(outputs) == 1:
            classes = outputs[0]["shape"][1:] if model.max_batch_size > 0 else outputs[0]["shape"]
            if len(classes) != 1 or classes[0] in (0, 1):
                raise NotAnImageClassifier(f"model '{model.name}' answers {classes}, not one vector of class scores")
        if len(inputs) == 1 and len(outputs) == 1 and inputs[0]["datatype"] == "BYTES" and outputs[0]["datatype"] == "FP32":
            dims = inputs[0]["shape"][1:] if model.max_batch_size > 0 else inputs[0]["shape"]
            if dims not in ([1], [-1]):
                raise NotAnImageClassifier(f"model '{model.name}' takes {dims} strings, not one image")
            self.kind, self.input, self.output = "bytes", inputs[0]["name"], outputs[0]["name"]
            return
        self.input, self.output, datatype, self.layout, self.c, self.h, self.w, _ = model_input_spec(metadata, config)
        self.dtype = datatypes.to_numpy(datatype)
        imagenet = handler_of(config) == "image_classifier" and self.layout == "NCHW" and self.c == 3
        self.kind = "imagenet" if imagenet else "tensor"

    def tensor(self, image: Any, data: bytes) -> np.ndarray:
        """The model's input for one image (CPU work: run it off the event loop)."""
        if self.kind == "bytes":
            array = np.array([data], dtype=np.object_)
        elif self.kind == "imagenet":
            array = images.imagenet_preprocess(image, crop=self.h).astype(self.dtype)
        else:
            array = images.image_client_preprocess(image, self.layout, self.dtype, self.c, self.h, self.w, "NONE")
        return array[None] if self.model.max_batch_size > 0 else array

    def top(self, scores: np.ndarray) -> list[dict[str, Any]]:
        row = np.asarray(scores, dtype=np.float64).reshape(-1)
        if self.kind == "imagenet" or row.min() < 0 or row.max() > 1 or abs(row.sum() - 1) > 1e-3:
            row = np.exp(row - row.max())  # logits (or unnormalised scores): softmax
            row /= row.sum()
        labels = self.model.labels.get(self.output) if self.model.labels else None
        return [{"index": int(i), "label": label(labels, int(i)) or f"class {int(i)}", "probability": float(row[i])}
                for i in top_indices(row[None], TOP)[0]]


class Console:
    def __init__(self, dataplane: DataPlane, ports: dict[str, int] | None = None,
                 max_input_size: int = DEFAULT_HTTP_MAX_INPUT_SIZE, sampler: Sampler | None = None) -> None:
        self.dataplane = dataplane
        self.ports = dict(ports) if ports is not None else {"http": 1}
        self.max_input_size = max_input_size
        self.sampler = sampler if sampler is not None else Sampler(dataplane)
        self.started = time.time()
        self._assets: dict[str, bytes] = {}
        self.apis: dict[str, Any] = {}  # other HTTP front ends' apps by name, for their OpenAPI documents

    def add_api(self, name: str, frontend: Any) -> None:
        """Document a front end this server runs (its app: `frontend.server.config.app`)."""
        if name in openapi.APIS and name != "http":
            app = getattr(getattr(getattr(frontend, "server", None), "config", None), "app", frontend)
            if openapi.routes_of(app):
                self.apis[name] = app

    # -- models ------------------------------------------------------------------------
    def _source(self, name: str) -> str:
        if self.dataplane.is_registered(name):
            return "TorchServe archive"
        configurable = self.dataplane.configurable
        if configurable is not None and name in configurable.names():
            return "TF Serving models.conf"
        return "Triton model repository"

    def _protocols(self, model: Model | None) -> list[str]:
        names = [n for n in FRONTENDS if self.ports.get(n, 0) and not n.endswith("metrics")]
        if model is not None and self.dataplane.is_decoupled(model):
            names = [n for n in names if n in STREAMING]
        return [FRONTENDS[n][1] for n in names]

    def model_row(self, name: str) -> dict[str, Any]:
        status = self.dataplane.status(name)
        try:
            model: Model | None = self.dataplane.model(name)
        except ServerError:
            model = None
        versions = [{"version": v, "state": s.state, "reason": s.reason} for v, s in sorted(status.versions.items())]
        row: dict[str, Any] = {
            "name": name,
            "source": self._source(name),
            "state": status.state,
            "reason": status.reason,
            "versions": versions,
            "ready_versions": list(status.ready_versions),
            "default_version": self.dataplane.default_version(name),
            "protocols": self._protocols(model),
            "classifier": None,
        }
        if model is not None:
            scheduler = model.scheduler
            config = model.config
            row.update({
                "version": model.version,
                "platform": config.platform,
                "backend": config.backend,
                "instances": model.instance_count,
                "max_batch_size": model.max_batch_size,
                "batch_cap": scheduler.policy.max_batch_size if isinstance(scheduler, Scheduler) else model.max_batch_size,
                "dynamic_batching": config.HasField("dynamic_batching"),
                "decoupled": self.dataplane.is_decoupled(model),
                "inputs": tensor_metadata(model)["inputs"],
                "outputs": tensor_metadata(model)["outputs"],
                "requests": model.stats.success.count + model.stats.fail.count,
            })
            try:
                row["classifier"] = Classifier(model).kind
            except (NotAnImageClassifier, KeyError, ValueError):
                pass
        return row

    async def models(self, request: Request) -> Response:
        """Every model from every source: state, versions, platform, batching, protocols."""
        return _json({
            "server": {"name": "triserve", "version": __version__, "ready": self.dataplane.ready(),
                       "control_mode": self.dataplane.control_mode, "started": self.started},
            "models": [self.model_row(name) for name in self.dataplane.names()],
        })

    async def model(self, request: Request) -> Response:
        """One model: its config (pbtxt and JSON), metadata, labels and statistics."""
        name = request.path_params["model"]
        row = self.model_row(name)  # ModelNotFound: 404
        detail: dict[str, Any] = {"model": row}
        if "version" in row:
            model = self.dataplane.model(name)
            stats = model.stats
            detail.update({
                "config_pbtxt": text_format.MessageToString(model.config),
                "config": config_dict(model),
                "metadata": tensor_metadata(model),
                "labels": {k: list(v) if not isinstance(v, dict) else v for k, v in (model.labels or {}).items()},
                "statistics": {
                    "inference_count": stats.inference_count,
                    "execution_count": stats.execution_count,
                    "success": stats.success.count,
                    "fail": stats.fail.count,
                    "mean_ms": round(stats.success.ns / stats.success.count / 1e6, 3) if stats.success.count else None,
                    "queue_ms": round(stats.queue.ns / stats.queue.count / 1e6, 3) if stats.queue.count else None,
                    "pending": stats.pending,
                    "batch_sizes": {str(s): d[0].count for s, d in sorted(stats.batches.items())},
                    "loaded_at": model.loaded_at,
                },
            })
        return _json(detail)

    # -- traffic -----------------------------------------------------------------------
    async def traffic(self, request: Request) -> Response:
        """The traffic history: 1-s samples (after `since`, epoch seconds) per model and in total."""
        try:
            since = float(request.query_params.get("since", "0") or 0)
        except ValueError:
            raise invalid("query parameter 'since' must be a number (epoch seconds)") from None
        return _json({"interval_s": self.sampler.interval, "samples": self.sampler.history(since),
                      "totals": self.sampler.totals()})

    # -- try it ------------------------------------------------------------------------
    async def classify(self, request: Request) -> Response:
        """An image (the body) through every ready image classifier: each one's top 5 and latency."""
        data = await read_body(request, self.max_input_size)
        if not data:
            raise invalid("the request body must be an image file (JPEG, PNG, ...)")
        image = await offload.off_loop(images.decode, data)
        classifiers, skipped = [], []
        for name in self.dataplane.names():
            try:
                model = self.dataplane.model(name)
            except ServerError:
                continue
            try:
                classifiers.append(Classifier(model))
            except (NotAnImageClassifier, KeyError, ValueError) as e:
                skipped.append({"model": name, "reason": str(e)})
        results = await asyncio.gather(*(self._classify_one(c, image, data) for c in classifiers))
        return _json({"results": list(results), "skipped": skipped})

    async def _classify_one(self, classifier: Classifier, image: Any, data: bytes) -> dict[str, Any]:
        model = classifier.model
        answer: dict[str, Any] = {"model": model.name, "version": model.version, "kind": classifier.kind}
        try:
            tensor = await offload.off_loop(classifier.tensor, image, data)
            started = time.perf_counter()
            model = self.dataplane.model(model.name, model.version)  # still ready after the preprocessing
            response = await self.dataplane.infer(model, InferRequest({classifier.input: tensor}))
            answer["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            answer["top"] = await offload.off_loop(classifier.top, response.outputs[classifier.output])
        except ServerError as e:
            answer["error"] = e.message
        return answer

    # -- control -----------------------------------------------------------------------
    async def load(self, request: Request) -> Response:
        """Load or reload the model (explicit model control mode)."""
        await self.dataplane.load(request.path_params["model"])
        return _json(self.model_row(request.path_params["model"]))

    async def unload(self, request: Request) -> Response:
        """Unload the model (explicit model control mode)."""
        await self.dataplane.unload(request.path_params["model"])
        return _json(self.model_row(request.path_params["model"]))

    # -- page --------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        name = request.path_params.get("file", "index.html")
        if name not in STATIC:
            return Response(b"not found", 404, media_type="text/plain")
        return Response(_static(name), 200, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    # -- API documents ---------------------------------------------------------------
    def _documents(self) -> list[tuple[str, str]]:
        return [(openapi.APIS[n][0], f"/openapi/{n}.json") for n in ["http", *sorted(self.apis)]]

    async def openapi_json(self, request: Request) -> Response:
        api = request.path_params.get("api", "http")
        if api == "http":
            routes = openapi.routes_of(request.app)
        elif api in self.apis:
            routes = openapi.routes_of(self.apis[api])
        else:
            names = ", ".join(n for n in ["http", *sorted(self.apis)])
            return _json({"error": f"no API '{api}' on this server; documented: {names}"}, 404)
        return _json(openapi.document(api, routes))

    async def docs(self, request: Request) -> Response:
        return Response(openapi.docs_page(self._documents()), 200, media_type="text/html; charset=utf-8")

    async def docs_asset(self, request: Request) -> Response:
        name = request.path_params["file"]
        if name not in DOCS_ASSETS:
            return Response(b"not found", 404, media_type="text/plain")
        data = self._assets.get(name)
        if data is None:
            data = self._assets[name] = await offload.off_loop(_docs_asset, name)
        return Response(data, 200, media_type=DOCS_ASSETS[name], headers={"Cache-Control": "max-age=86400"})

    def routes(self) -> list[BaseRoute]:
        api = "/console/api"
        return [
            Route("/openapi.json", self.openapi_json),
            Route("/openapi/{api}.json", self.openapi_json),
            Route("/docs", self.docs),
            Route("/docs/{file}", self.docs_asset),
            Route("/", self.page),
            Route("/console", self.page),  # on --single-port, where / is TorchServe's
            Route("/console/{file}", self.page),
            Route(api + "/models", self.models),
            Route(api + "/models/{model}", self.model),
            Route(api + "/traffic", self.traffic),
            Route(api + "/classify", self.classify, methods=["POST"]),
            Route(api + "/models/{model}/load", self.load, methods=["POST"]),
            Route(api + "/models/{model}/reload", self.load, methods=["POST"]),
            Route(api + "/models/{model}/unload", self.unload, methods=["POST"]),
        ]
