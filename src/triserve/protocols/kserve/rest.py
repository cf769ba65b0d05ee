"""KServe v2 / Triton HTTP front end, with Triton's binary tensor, classification,
statistics, model configuration and model repository extensions."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any, Mapping

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.background import BackgroundTask

from triserve import __version__, datatypes
from triserve.core.dataplane import DataPlane
from triserve.core.model import Model, element_count
from triserve.core.types import InferRequest, InferResponse, RequestedOutput
from triserve.errors import Code, ServerError, invalid
from triserve.options import DEFAULT_HTTP_MAX_INPUT_SIZE, ServerOptions
from triserve import logs
from triserve.protocols.kserve import logging_settings, predecode, shared_memory, tensors, trace
from triserve.protocols.kserve.common import EXTENSIONS, class_count, index_rows, load_arguments, model_metadata, schedule_options
from triserve.protocols.kserve.common import sequence_options
from triserve.protocols.kserve.common import find_model, load_model, poll_failure, stats_models
from triserve.protocols.kserve.common import extension_state
from triserve.protocols.kserve.statistics import statistics_json
from triserve.protocols.transport import offload
from triserve.protocols.transport.bodies import inflate, read_body
from triserve.protocols.transport.compression import choose_encoding, compress
from triserve.protocols.transport.http import HTTPFrontEnd, unless_disconnected
from triserve.protocols.transport.json_input import parse_object
from triserve.protocols.transport.processes import Predecoded
from triserve.protocols.kserve.config_json import to_json

log = logging.getLogger("triserve")

HTTP_STATUS = {
    Code.INVALID_ARG: 400,
    Code.NOT_FOUND: 404,
    Code.UNAVAILABLE: 503,
    Code.INTERNAL: 500,
    Code.UNSUPPORTED: 501,
    Code.ALREADY_EXISTS: 400,
}
HEADER_LENGTH = "inference-header-content-length"
# Triton's HTTPAPIServer::CheckTransactionPolicy (server src/http_server.cc): UNSUPPORTED, 501.
DECOUPLED_REFUSED = "HTTP end point doesn't support models with decoupled transaction policy"


def error_response(message: str, status: int) -> Response:
    return Response(orjson.dumps({"error": message}), status, media_type="application/json")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _empty_ok() -> Response:
    return Response(b"", 200, media_type="text/plain")


class V2HTTP:
    def __init__(
        self,
        dataplane: DataPlane,
        max_input_size: int = DEFAULT_HTTP_MAX_INPUT_SIZE,
        shm: shared_memory.SystemSharedMemory | None = None,
        tracer: trace.Tracer | None = None,
        log_settings: logs.Settings | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.max_input_size = max_input_size  # --http-max-input-size: bodies, also once inflated
        # Shared with the gRPC front end of the same data plane unless given.
        self.shm = shm if shm is not None else shared_memory.registry(dataplane)
        self.tracer = tracer if tracer is not None else trace.tracer(dataplane)
        self.log_settings = log_settings

    # -- health and metadata ------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return _empty_ok()

    async def ready(self, request: Request) -> Response:
        if self.dataplane.ready():
            return _empty_ok()
        return error_response("Server is not ready: not every model is ready", 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "triserve", "version": __version__, "extensions": EXTENSIONS})

    def _model(self, request: Request):
        params = request.path_params
        return find_model(self.dataplane, params["model"], str(params.get("version", "")))

    async def model_ready(self, request: Request) -> Response:
        self._model(request)  # raises 404 / 503 when not ready
        return _empty_ok()

    async def model_metadata(self, request: Request) -> Response:
        return json_response(model_metadata(self.dataplane, self._model(request)))

    async def model_config(self, request: Request) -> Response:
        return json_response(to_json(self._model(request).config))

    async def stats(self, request: Request) -> Response:
        params = request.path_params
        models = stats_models(self.dataplane, params.get("model", ""), str(params.get("version", "")))
        return json_response({"model_stats": [statistics_json(m.stats) for m in models]})

    # -- repository -------------------------------------------------------------------
    async def repository_index(self, request: Request) -> Response:
        body = await read_body(request, self.max_input_size)
        ready_only = False
        if body.strip():
            data = await parse_object(body)
            ready_only = bool(data.get("ready", False))
        return json_response(index_rows(self.dataplane, ready_only))

    async def repository_load(self, request: Request) -> Response:
        name = request.path_params["model"]
        try:
            body = await read_body(request, self.max_input_size)
            parameters = _parameters(await parse_object(body), "the load request") if body.strip() else {}
            try:
                config, files = load_arguments(parameters)
            except ServerError as e:  # the model's config given: Triton's poll of the model fails
                raise poll_failure(name, e) from None
            # over HTTP, `file:` contents travel base64-encoded (tritonclient.http encodes them)
            files = {k: _base64(k, v) for k, v in files.items()}
        except ServerError as e:  # refused before the manager (which logs its own failures) saw it
            log.warning("refused to load model '%s': %s", name, e.message)
            raise
        await load_model(self.dataplane, name, config, files)
        return _empty_ok()

    async def repository_unload(self, request: Request) -> Response:
        body = await read_body(request, self.max_input_size)
        parameters = _parameters(await parse_object(body), "the unload request") if body.strip() else {}
        await self.dataplane.unload(
            request.path_params["model"], bool(parameters.get("unload_dependents", False))
        )
        return _empty_ok()

    # -- inference --------------------------------------------------------------------
    async def traced_infer(self, request: Request) -> Response:
        """infer(), timed when the trace settings sample this request."""
        # As Triton's HandleInfer: the model and its transaction policy are checked before a
        # trace starts (a decoupled model answers only ModelStreamInfer).
        if self.dataplane.is_decoupled(self._model(request)):
            raise ServerError(DECOUPLED_REFUSED, Code.UNSUPPORTED)
        sampled = self.tracer.sample(request.path_params["model"], request.headers)
        if sampled is None:
            return await self.infer(request)
        sampled.stamp("HTTP_RECV_START")
        token = trace.CURRENT.set(sampled)
        try:
            response = await self.infer(request)
            await self.tracer.render(sampled)  # its tensors (TENSORS level), off the loop when large
        except BaseException:
            self.tracer.finish_later(sampled)
            raise
        finally:
            trace.CURRENT.reset(token)
        sampled.stamp("HTTP_SEND_START")
        response.background = BackgroundTask(self.tracer.finish, sampled, "HTTP_SEND_END")
        return response

    async def infer(self, request: Request) -> Response:
        self._model(request)  # as Triton: an unknown model or version is answered before the body is read
        body = await read_body(request, self.max_input_size, buffer=True)
        trace.stamp_current("HTTP_RECV_END")
        body = await inflate(body, request.headers.get("content-encoding"), self.max_input_size)
        header, binary = _split_body(body, request.headers.get(HEADER_LENGTH))
        if header is None:  # Inference-Header-Content-Length: 0, the body is the one input's bytes
            core_request, binary_outputs = decode_raw_request(self._model(request), binary)
        else:
            data = await parse_object(header, predecode=predecode.json_inputs_for(self._model(request)))
            core_request, binary_outputs = await decode_infer_request(self._model(request), data, binary, self.shm)
        targets = output_targets(self.shm, data) if header is not None else {}
        core_request.trace = trace.CURRENT.get()
        model = self._model(request)  # again: a reload may have retired it while the contents were read
        response = await unless_disconnected(request, self.dataplane.infer(model, core_request))
        if targets:  # outputs the client asked for in its shared memory regions
            size = shared_memory.output_bytes(response.outputs, targets)
            await offload.run(size, shared_memory.write_outputs, response.outputs, targets, tensors.to_bytes)
        size = sum(array.size for array in response.outputs.values())  # large outputs are encoded off the loop
        content, json_length = await offload.run(size, encode_infer_response, response, binary_outputs, targets)
        headers = {}
        if json_length is not None:
            headers["Inference-Header-Content-Length"] = str(json_length)
            media_type = "application/octet-stream"
        else:
            media_type = "application/json"
        encoding = choose_encoding(request.headers.get("accept-encoding"))
        if encoding:
            content = await offload.run(len(content), compress, content, encoding)
            headers["Content-Encoding"] = encoding
        return Response(content, 200, headers=headers, media_type=media_type)

    def app(self, extra_routes: list[BaseRoute] | None = None) -> Starlette:
        """The v2 routes, and `extra_routes` (the console, which server.py composes in)."""
        model = "/v2/models/{model}"
        versioned = model + "/versions/{version:int}"
        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/v2/models/stats", self.stats),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{model}/load", self.repository_load, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", self.repository_unload, methods=["POST"]),
        ]
        for prefix in (model, versioned):
            routes += [
                Route(prefix, self.model_metadata),
                Route(prefix + "/ready", self.model_ready),
                Route(prefix + "/config", self.model_config),
                Route(prefix + "/stats", self.stats),
                Route(prefix + "/infer", self.traced_infer, methods=["POST"]),
            ]
        routes += shared_memory.http_routes(self.shm)
        routes += trace.http_routes(self.tracer, lambda name: find_model(self.dataplane, name, ""))
        routes += logging_settings.http_routes(self.log_settings)
        routes += extra_routes or []
        return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)


def _base64(key: str, value: object) -> bytes:
    try:
        return base64.b64decode(value, validate=True)  # type: ignore[arg-type]
    except (binascii.Error, TypeError, ValueError):
        raise invalid(f"parameter '{key}' must be base64-encoded file content") from None


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes | None, memoryview]:
    """The JSON header and the binary data after it; the header is None for a raw binary request
    (a header length of 0: the whole body is the single input's data)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not (text.isascii() and text.lstrip("+-").isdigit()):
        raise invalid(f"Unable to parse Inference-Header-Content-Length, got: {tensors.short_text(header_length)}")
    length = int(text)
    if length < 0 or length > len(body):
        raise invalid(
            f"Unable to parse Inference-Header-Content-Length: inference header size should be in range"
            f" (0, {len(body)}), got: {tensors.short_text(header_length)}"
        )
    view = memoryview(body)
    if length == 0:
        return None, view
    return body[:length], view[length:]


def decode_raw_request(model: Model, data: memoryview) -> tuple[InferRequest, dict[str, bool]]:
    """Triton's raw binary request: the model's single input, its datatype and shape from the
    config (batch 1 for a batching model; one variable dimension sized from the data), and
    every output answered as binary data."""
    prefix = "[request id: <id_unknown>] "
    config_inputs = model.config.input
    if len(config_inputs) != 1:
        raise invalid(
            f"{prefix}Raw request must only have 1 input (found 1) to be deduced but got {len(config_inputs)}"
            f" inputs in '{model.name}' model configuration"
        )
    spec = config_inputs[0]
    datatype = datatypes.name_of_config(spec.data_type)
    shape = [1] if model.max_batch_size > 0 else []
    variable = None
    count = 1
    for dim in spec.dims:
        if dim < 0:
            if variable is not None:
                raise invalid(
                    f"{prefix}The shape of the raw input '{spec.name}' can not be deduced because there are more"
                    " than one variable-sized dimension"
                )
            variable = len(shape)
        else:
            count *= dim
        shape.append(dim)
    if datatype == "BYTES":
        if variable is not None or count != 1:
            raise invalid(f"{prefix}For BYTE datatype raw input '{spec.name}', the model must have input shape [1]")
        array = np.empty(1, dtype=np.object_)
        array[0] = bytes(data)
        array = array.reshape(shape)
    else:
        if variable is not None:
            size = count * datatypes.ELEMENT_SIZE[datatype]
            shape[variable] = len(data) // size if size else 0
        array = tensors.from_bytes(spec.name, datatype, shape, data)
    return InferRequest(inputs={spec.name: array}), {"": True}


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise invalid(f"{where}: 'parameters' must be an object")
    return params


async def decode_infer_request(
    model: Model, data: dict[str, Any], binary: memoryview, shm: shared_memory.SystemSharedMemory | None = None
) -> tuple[InferRequest, dict[str, bool]]:
    """The JSON header plus binary blobs to a core request; also which outputs go back binary.
    Tensor data is read only once the inputs' names, datatypes and shapes passed the model's
    checks, and large data is read off the event loop."""
    inputs_json = data.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise invalid("the request must have an 'inputs' array with at least one input")
    headers: dict[str, tuple[str, list[int]]] = {}
    sources: dict[str, memoryview | Any] = {}  # each input's blob, or its JSON data
    offset = 0
    for item in inputs_json:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid("each input must be an object with a 'name'")
        name = item["name"]
        if name in headers:
            raise invalid(f"input '{name}' is given twice")
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise invalid(f"input '{name}': 'datatype' must be a string")
        shape = tensors.check_shape(name, item.get("shape"))
        params = _parameters(item, f"input '{name}'")
        location = shared_memory.json_location(params)
        if location is not None:  # the input's bytes are in a registered shared memory region
            fields_error = shared_memory.json_input_fields_error(item, params)
            if fields_error is not None:
                raise fields_error
            sources[name] = shared_memory.input_view(shm, *location)
            headers[name] = (datatype, shape)
            continue
        size = params.get("binary_data_size")
        if size is not None and "data" in item:
            raise invalid(
                f"input '{name}': Input must set only one of the following fields: 'data', 'binary_data_size'"
                " in 'parameters', 'shared_memory_region' in 'parameters'. But both are set"
            )
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise invalid(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise invalid(
                    f"input '{name}': binary_data_size {size} goes past the end of the binary data"
                    f" ({len(binary) - offset} bytes left)"
                )
            sources[name] = binary[offset : offset + size]
            offset += size
        elif "data" in item:
            tensors.check_json_datatype(name, datatype)
            sources[name] = item["data"]
        else:
            raise invalid(
                f"input '{name}': Input must set only one of the following fields: 'data', 'binary_data_size'"
                " in 'parameters', 'shared_memory_region' in 'parameters'. But no field is set"
            )
        headers[name] = (datatype, shape)
    if offset != len(binary):
        raise invalid(f"the request has {len(binary) - offset} bytes of binary data that no input claims")
    request_id = data.get("id", "")
    request_id = str(request_id) if request_id is not None else ""
    model.check_inputs(headers, request_id)
    work = sum(tensors.read_cost(headers[n][0], len(s)) if isinstance(s, memoryview) else element_count(n, *headers[n])
               for n, s in sources.items())  # binary fixed-size data is viewed, not read: no thread hop
    inputs = await offload.run(work, _read_inputs, headers, sources)
    params = _parameters(data, "request")
    default_binary = bool(params.get("binary_data_output", False))
    outputs = None
    binary_outputs: dict[str, bool] = {}
    if "outputs" in data:
        if not isinstance(data["outputs"], list):
            raise invalid("'outputs' must be an array")
        outputs = []
        for item in data["outputs"]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise invalid("each requested output must be an object with a 'name'")
            out_params = _parameters(item, f"output '{item['name']}'")
            shared_memory.json_output_check(out_params)
            outputs.append(RequestedOutput(item["name"], class_count(item["name"], out_params.get("classification", 0))))
            binary_outputs[item["name"]] = bool(out_params.get("binary_data", default_binary))
    binary_outputs[""] = default_binary  # for outputs not named in the request
    priority, timeout = schedule_options(params)
    return (
        InferRequest(
            inputs=inputs,
            outputs=outputs,
            id=request_id,
            priority=priority,
            timeout_us=timeout,
            parameters=params,
            **sequence_options(params),
        ),
        binary_outputs,
    )


def _read_inputs(headers: dict[str, tuple[str, list[int]]], sources: dict[str, Any]) -> dict[str, np.ndarray]:
    inputs = {}
    for name, source in sources.items():
        datatype, shape = headers[name]
        if isinstance(source, memoryview):
            inputs[name] = tensors.from_bytes(name, datatype, shape, source)
        elif isinstance(source, Predecoded):  # read in a worker process (a large body)
            inputs[name] = source.value()
        else:
            inputs[name] = tensors.from_json(name, datatype, shape, source)
    return inputs


def output_targets(shm: shared_memory.SystemSharedMemory | None, data: dict[str, Any]) -> dict[str, shared_memory.Target]:
    """The requested outputs that go to shared memory regions, checked against them now."""
    targets = {}
    for item in data.get("outputs") or ():
        params = item.get("parameters") if isinstance(item, dict) else None
        if isinstance(params, dict) and isinstance(item.get("name"), str):
            location = shared_memory.json_location(params)
            if location is not None:
                targets[item["name"]] = shared_memory.output_target(shm, *location)
    return targets


def encode_infer_response(
    response: InferResponse, binary_outputs: dict[str, bool], in_shared_memory: Mapping[str, Any] = {}
) -> tuple[bytes, int | None]:
    """JSON header then blobs in output order; the header length is None when there are no blobs.
    Outputs `in_shared_memory` were written to the client's regions: only their metadata."""
    outputs = []
    blobs = []
    for name, array in response.outputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatypes.from_numpy(array.dtype),
            "shape": list(array.shape),
        }
        if name in in_shared_memory:
            pass
        elif binary_outputs.get(name, binary_outputs[""]):
            blob = tensors.to_buffer(array)  # a view of the output: b"".join below is its one copy
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensors.to_json(array)
        outputs.append(entry)
    result: dict[str, Any] = {}
    if response.id:
        result["id"] = response.id
    result["model_name"] = response.model_name
    result["model_version"] = response.model_version
    result["outputs"] = outputs
    header = orjson.dumps(result)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def frontend(dataplane: DataPlane, options: ServerOptions, port: int,
             extra_routes: list[BaseRoute] | None = None) -> HTTPFrontEnd:
    shm, tracer = extension_state(dataplane, options)
    app = V2HTTP(dataplane, options.http.max_input_size, shm, tracer).app(extra_routes)
    return HTTPFrontEnd(app, options.host, port, options.http)


async def _server_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServerError)
    return error_response(exc.message, HTTP_STATUS[exc.code])


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.detail, exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path)
    return error_response("internal error: the server log has the details", 500)  # no reprs or paths in answers


EXCEPTION_HANDLERS = {ServerError: _server_error, HTTPException: _http_error, Exception: _unexpected}
