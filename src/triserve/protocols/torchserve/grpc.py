"""TorchServe's gRPC APIs: inference (--torchserve-grpc-inference-port, 7070) and management
(--torchserve-grpc-management-port, 7071), wire-compatible with TorchServe's own stubs.

The messages are triserve's protos written from TorchServe's published interface
(protos/torchserve_inference.proto, torchserve_management.proto: TorchServe's packages, services
and field numbers); the services are registered under TorchServe's names.

- `InferenceAPIsService`: `Ping` (the health JSON), `Predictions` (the request's `input` map is
  one request row, as the HTTP API's form fields; the answer is encoded as the HTTP API encodes
  it), `StreamPredictions` (the handler's answers as a stream: one message for the built-in
  handlers). `StreamPredictions2` (stateful sequences) answers UNIMPLEMENTED: triserve has no
  sequence batching. Errors as TorchServe: an unknown model is INTERNAL, a failed job the gRPC
  code of its HTTP status (503 UNAVAILABLE, 400 INVALID_ARGUMENT, ...).
- `ManagementAPIsService`: the HTTP management API's semantics (management.py), with TorchServe's
  gRPC reading of the request (an int field <= 0 is its default, an empty string is unset);
  `msg` is the HTTP API's JSON (describe, list) or status text. HTTP statuses map as
  TorchServe's GRPCUtils.getGRPCStatusCode. Register and unregister need --enable-model-api
  (PERMISSION_DENIED otherwise).

With --enable-token-auth each call needs `authorization: Bearer <key>` metadata: the inference
key on 7070, the management key on 7071 (PERMISSION_DENIED otherwise, as TorchServe).
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
import orjson
from google.protobuf import empty_pb2

from triserve.core.dataplane import DataPlane
from triserve.errors import ServerError, invalid
from triserve.options import ServerOptions
from triserve.protocols.torchserve.auth import FAILED, TokenAuth, auth_for
from triserve.protocols.torchserve.forms import status_of
from triserve.protocols.torchserve.inference import _encode, find_model
from triserve.protocols.torchserve.management import TorchServeManagement
from triserve.protocols.torchserve.metrics import TorchServeMetrics, metrics_for
from triserve.protocols.transport.grpc import INTERNAL_ERROR, GRPCFrontEnd, add_service
from triserve.protos import torchserve_inference_pb2 as inference
from triserve.protos import torchserve_management_pb2 as management

log = logging.getLogger("triserve")

INFERENCE_SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
MANAGEMENT_SERVICE = "org.pytorch.serve.grpc.management.ManagementAPIsService"

_C = grpc.StatusCode
_BY_HTTP = {400: _C.INVALID_ARGUMENT, 401: _C.UNAUTHENTICATED, 403: _C.PERMISSION_DENIED, 404: _C.NOT_FOUND,
            409: _C.ABORTED, 413: _C.RESOURCE_EXHAUSTED, 429: _C.RESOURCE_EXHAUSTED, 416: _C.OUT_OF_RANGE,
            499: _C.CANCELLED, 504: _C.DEADLINE_EXCEEDED, 501: _C.UNIMPLEMENTED, 503: _C.UNAVAILABLE}


def grpc_code(http_status: int) -> grpc.StatusCode:
    """TorchServe's GRPCUtils.getGRPCStatusCode."""
    if http_status in _BY_HTTP:
        return _BY_HTTP[http_status]
    if 400 <= http_status < 500:
        return _C.FAILED_PRECONDITION
    if 500 <= http_status < 600:
        return _C.INTERNAL
    return _C.UNKNOWN


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _int(value: int, default: int) -> int:
    """TorchServe's GRPCUtils.getRegisterParam for ints: a value > 0, else the default."""
    return value if value > 0 else default


Handler = Callable[[Any, Any], Awaitable[Any]]


class _Calls:
    """Wraps each method: the token check, and ServerErrors as TorchServe's gRPC codes."""

    def __init__(self, auth: TokenAuth | None, kind: str) -> None:
        self.auth = auth
        self.kind = kind

    async def check(self, context: Any) -> None:
        if self.auth is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        if not self.auth.check(self.kind, metadata.get("authorization")):
            await context.abort(_C.PERMISSION_DENIED, FAILED)

    def unary(self, method: Handler, request_type: Any, not_found: grpc.StatusCode | None = None) -> grpc.RpcMethodHandler:
        async def handler(request: Any, context: Any) -> Any:
            await self.check(context)
            try:
                return await method(request, context)
            except ServerError as e:
                status, _ = status_of(e)
                code = not_found if not_found is not None and status == 404 else grpc_code(status)
                await context.abort(code, e.message)
            except grpc.aio.AbortError:
                raise
            except Exception:  # a clean INTERNAL, never a dropped call
                log.exception("unexpected error in a TorchServe gRPC call")
                await context.abort(_C.INTERNAL, INTERNAL_ERROR)

        return grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=request_type.FromString, response_serializer=lambda m: m.SerializeToString())

    def stream(self, method: Callable[[Any, Any], AsyncIterator[Any]], request_type: Any) -> grpc.RpcMethodHandler:
        async def handler(request: Any, context: Any) -> AsyncIterator[Any]:
            await self.check(context)
            try:
                async for answer in method(request, context):
                    yield answer
            except ServerError as e:
                status, _ = status_of(e)
                await context.abort(_C.INTERNAL if status == 404 else grpc_code(status), e.message)
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("unexpected error in a TorchServe gRPC stream")
                await context.abort(_C.INTERNAL, INTERNAL_ERROR)

        return grpc.unary_stream_rpc_method_handler(
            handler, request_deserializer=request_type.FromString, response_serializer=lambda m: m.SerializeToString())


class TorchServeInferenceGRPC:
    def __init__(self, dataplane: DataPlane, auth: TokenAuth | None = None, metrics: TorchServeMetrics | None = None) -> None:
        self.dataplane = dataplane
        self.calls = _Calls(auth, "inference")
        self.metrics = metrics

    async def ping(self, request: empty_pb2.Empty, context: Any) -> inference.TorchServeHealthResponse:
        healthy = self.dataplane.ready(strict=True)
        return inference.TorchServeHealthResponse(health=_pretty({"status": "Healthy" if healthy else "Unhealthy"}))

    async def _answers(self, request: inference.PredictionsRequest) -> list[bytes]:
        if not request.model_name:
            raise invalid("Parameter model_name is required.")
        row = dict(request.input)  # the values stay bytes, as TorchServe's handlers get them
        model = find_model(self.dataplane, request.model_name, request.model_version or None)
        replies = await self.dataplane.predict(model, [row])
        if self.metrics is not None:
            self.metrics.request_served(model, request.model_version or None)
        return [_encode(reply)[0] for reply in replies]

    async def predictions(self, request: inference.PredictionsRequest, context: Any) -> inference.PredictionResponse:
        (answer,) = await self._answers(request)
        return inference.PredictionResponse(prediction=answer)

    async def stream_predictions(self, request: inference.PredictionsRequest, context: Any
                                 ) -> AsyncIterator[inference.PredictionResponse]:
        for answer in await self._answers(request):
            yield inference.PredictionResponse(prediction=answer)

    async def _stream2(self, request_iterator: Any, context: Any) -> AsyncIterator[inference.PredictionResponse]:
        await self.calls.check(context)
        await context.abort(_C.UNIMPLEMENTED, "StreamPredictions2 (stateful sequences) is not supported by triserve;"
                                              " use Predictions or StreamPredictions")
        yield inference.PredictionResponse()  # never reached: abort raises

    def register(self, server: grpc.aio.Server) -> list[str]:
        calls = self.calls
        add_service(server, INFERENCE_SERVICE, {
            "Ping": calls.unary(self.ping, empty_pb2.Empty),
            "Predictions": calls.unary(self.predictions, inference.PredictionsRequest, not_found=_C.INTERNAL),
            "StreamPredictions": calls.stream(self.stream_predictions, inference.PredictionsRequest),
            "StreamPredictions2": grpc.stream_stream_rpc_method_handler(
                self._stream2, request_deserializer=inference.PredictionsRequest.FromString,
                response_serializer=lambda m: m.SerializeToString()),
        })
        return [INFERENCE_SERVICE]


class TorchServeManagementGRPC:
    def __init__(self, dataplane: DataPlane, enable_model_api: bool = False, auth: TokenAuth | None = None) -> None:
        self.http = TorchServeManagement(dataplane, enable_model_api, auth)
        self.enable_model_api = enable_model_api
        self.calls = _Calls(auth, "management")

    @staticmethod
    def _answer(msg: str) -> management.ManagementResponse:
        return management.ManagementResponse(msg=msg)

    async def _model_api(self, context: Any) -> None:
        if not self.enable_model_api:
            await context.abort(_C.PERMISSION_DENIED, "Model API disabled")

    async def describe(self, request: management.DescribeModelRequest, context: Any) -> management.ManagementResponse:
        return self._answer(_pretty(self.http.description(request.model_name, request.model_version or None)))

    async def list_models(self, request: management.ListModelsRequest, context: Any) -> management.ManagementResponse:
        # proto3 cannot tell an unset limit from 0: unset is the HTTP API's default, 100
        return self._answer(_pretty(self.http.model_list(_int(request.limit, 100), request.next_page_token)))

    async def register_model(self, request: management.RegisterModelRequest, context: Any) -> management.ManagementResponse:
        await self._model_api(context)
        params: dict[str, Any] = {"synchronous": "true" if request.synchronous else "false"}
        for key in ("url", "model_name", "handler", "runtime"):
            if getattr(request, key):
                params[key] = getattr(request, key)
        for key in ("batch_size", "initial_workers", "max_batch_delay", "response_timeout", "startup_timeout"):
            if getattr(request, key) > 0:
                params[key] = getattr(request, key)
        answer = await self.http.register_params(params)
        return self._answer(answer.message)

    async def scale_worker(self, request: management.ScaleWorkerRequest, context: Any) -> management.ManagementResponse:
        minimum = _int(request.min_worker, 1)
        params = {"min_worker": minimum, "max_worker": _int(request.max_worker, minimum),
                  "synchronous": "true" if request.synchronous else "false"}
        answer = await self.http.scale_params(request.model_name, request.model_version or None, params)
        return self._answer(answer.message)

    async def set_default(self, request: management.SetDefaultRequest, context: Any) -> management.ManagementResponse:
        return self._answer(self.http.set_default_version(request.model_name, request.model_version))

    async def unregister_model(self, request: management.UnregisterModelRequest, context: Any
                               ) -> management.ManagementResponse:
        await self._model_api(context)
        if not request.model_name:
            await context.abort(_C.INVALID_ARGUMENT, "Parameter model_name is required.")
        return self._answer(await self.http.unregister_model(request.model_name, request.model_version or None))

    def register(self, server: grpc.aio.Server) -> list[str]:
        calls = self.calls
        add_service(server, MANAGEMENT_SERVICE, {
            "DescribeModel": calls.unary(self.describe, management.DescribeModelRequest),
            "ListModels": calls.unary(self.list_models, management.ListModelsRequest),
            "RegisterModel": calls.unary(self.register_model, management.RegisterModelRequest),
            "ScaleWorker": calls.unary(self.scale_worker, management.ScaleWorkerRequest),
            "SetDefault": calls.unary(self.set_default, management.SetDefaultRequest),
            "UnregisterModel": calls.unary(self.unregister_model, management.UnregisterModelRequest),
        })
        return [MANAGEMENT_SERVICE]


def inference_frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> GRPCFrontEnd:
    servicer = TorchServeInferenceGRPC(dataplane, auth_for(dataplane, options.torchserve),
                                       metrics_for(dataplane, options.torchserve.metrics_mode))
    return GRPCFrontEnd(servicer.register, options.host_of("torchserve_grpc_inference"), port, ready=dataplane.ready,
                        max_message_bytes=options.grpc.max_message_bytes)


def management_frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> GRPCFrontEnd:
    servicer = TorchServeManagementGRPC(dataplane, options.torchserve.enable_model_api,
                                        auth_for(dataplane, options.torchserve))
    return GRPCFrontEnd(servicer.register, options.host_of("torchserve_grpc_management"), port, ready=dataplane.ready,
                        max_message_bytes=options.grpc.max_message_bytes)
