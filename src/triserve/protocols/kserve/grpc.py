"""KServe v2 / Triton gRPC front end: `inference.GRPCInferenceService` on tritonclient's own
generated messages, with the classification, statistics, model configuration and model
repository extensions."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, AsyncIterator

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from triserve import __version__, datatypes
from triserve.core.dataplane import DataPlane
from triserve.core.model import Model, element_count
from triserve.core.types import InferRequest, InferResponse, RequestedOutput
from triserve.errors import Code, ServerError, invalid
from triserve.protocols.kserve import tensors
from triserve.protocols.kserve.contents import field_of, from_contents
from triserve.protocols.transport import offload
from triserve.protocols.transport.grpc import (
    GRPC_STATUS,
    INTERNAL_ERROR,
    GRPCFrontEnd,
    add_service,
    check_bytes_elements,
    generated_handlers,
    read_whole,
    skimmed,
)
from triserve.options import DEFAULT_GRPC_MAX_BYTES_ELEMENTS, ServerOptions
from triserve.protocols.kserve.common import EXTENSIONS, class_count, index_rows, load_arguments, model_metadata, schedule_options
from triserve.protocols.kserve.statistics import statistics_json

log = logging.getLogger("triserve")

SERVICE = "inference.GRPCInferenceService"
# An inference request whose typed `contents` stay unread bytes until the inputs' names,
# datatypes and shapes passed the model's checks (60 MiB of BYTES elements take a parser a second).
SKIMMED_INFER_REQUEST = skimmed(pb.ModelInferRequest, {"inference.ModelInferRequest.InferInputTensor": ["contents"]})


def _rpc(method):
    """Errors become the gRPC status Triton gives them; anything unexpected is INTERNAL, logged."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except ServerError as e:
            error = (GRPC_STATUS[e.code], e.message)
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            error = (grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
        await context.abort(*error)

    return wrapper


class V2GRPC(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, max_bytes_elements: int = DEFAULT_GRPC_MAX_BYTES_ELEMENTS) -> None:
        self.dataplane = dataplane
        self.max_bytes_elements = max_bytes_elements

    # -- health and metadata ----------------------------------------------------------------
    @_rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @_rpc
    async def ModelReady(self, request, context):
        # As Triton: an unknown or unavailable model is "not ready", not an error.
        try:
            self.dataplane.resolve(request.name, request.version)
        except ServerError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="triserve", version=__version__, extensions=EXTENSIONS)

    @_rpc
    async def ModelMetadata(self, request, context):
        model = self.dataplane.resolve(request.name, request.version)
        return json_format.ParseDict(model_metadata(self.dataplane, model), pb.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=self.dataplane.resolve(request.name, request.version).config)

    @_rpc
    async def ModelStatistics(self, request, context):
        models = self.dataplane.stats_models(request.name, request.version)
        response = pb.ModelStatisticsResponse()
        for model in models:
            # The same numbers the HTTP statistics answer, in the proto of the same schema.
            json_format.ParseDict(statistics_json(model.stats), response.model_stats.add())
        return response

    # -- repository ---------------------------------------------------------------------------
    @_rpc
    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for row in index_rows(self.dataplane, request.ready):
            response.models.add(**row)
        return response

    @_rpc
    async def RepositoryModelLoad(self, request, context):
        config, files = load_arguments(_values(request.parameters))
        for key, content in files.items():
            if not isinstance(content, bytes):  # over gRPC, file contents travel as bytes_param
                raise invalid(f"parameter '{key}' must be a bytes_param with the file content")
        await self.dataplane.load(request.model_name, config, files)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context):
        parameters = _values(request.parameters)
        await self.dataplane.unload(request.model_name, bool(parameters.get("unload_dependents", False)))
        return pb.RepositoryModelUnloadResponse()

    # -- inference ----------------------------------------------------------------------------
    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = self.dataplane.resolve(request.model_name, request.model_version)
        core_request = await decode_infer_request(model, request, self.max_bytes_elements)
        # Looked up again: a reload may have retired `model` while the contents were read.
        model = self.dataplane.resolve(request.model_name, request.model_version)
        return encode_infer_response(await self.dataplane.infer(model, core_request))

    @_rpc
    async def ModelInfer(self, request, context):
        return await self._infer(request)

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently; each answer (or its error) is written as soon as it is ready."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=await self._infer(request)))
            except ServerError as e:
                answers.put_nowait(_stream_error(request, e.message))
            except Exception:
                log.exception("unexpected error in ModelStreamInfer")
                answers.put_nowait(_stream_error(request, INTERNAL_ERROR))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:  # the client closed its side: finish what it sent
                    await asyncio.gather(*running)
            finally:  # also when reading failed (a message that does not parse): the stream ends now
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await answers.get()
                if item is None:
                    break
                yield item
            await reader  # re-raises a failed read
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()


def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


_UNSUPPORTED = (
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)


def _unsupported(name: str):
    async def method(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by triserve")

    method.__name__ = name
    return method


for _name in _UNSUPPORTED:
    setattr(V2GRPC, _name, _unsupported(_name))


def _value(parameter) -> Any:
    """The set member of an InferParameter / ModelRepositoryParameter oneof (None if unset)."""
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None


def _values(parameters) -> dict[str, Any]:
    return {key: _value(p) for key, p in parameters.items()}


async def decode_infer_request(
    model: Model, request: pb.ModelInferRequest, max_bytes_elements: int = DEFAULT_GRPC_MAX_BYTES_ELEMENTS
) -> InferRequest:
    """Inputs from `raw_input_contents` (one per input, in order) or each input's typed `contents`,
    read only once their names, datatypes and shapes passed the model's checks (large contents
    are read off the event loop)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(
            f"expected {len(request.inputs)} raw_input_contents, one per input, but got {len(raw)}"
            f" for model '{request.model_name}'"
        )
    if not request.inputs:
        raise invalid("the request must have at least one input")
    headers: dict[str, tuple[str, list[int]]] = {}
    for tensor in request.inputs:
        name = tensor.name
        if name in headers:
            raise invalid(f"input '{name}' is given twice")
        if "shared_memory_region" in tensor.parameters:
            raise ServerError("shared memory inputs are not supported by triserve", Code.UNSUPPORTED)
        if raw and tensor.HasField("contents"):
            raise invalid(
                f"contents field must not be specified when using raw_input_contents for input '{name}'"
                f" for model '{request.model_name}'"
            )
        if not raw and not tensor.HasField("contents"):
            raise invalid(f"input '{name}': no data: set raw_input_contents or the input's contents")
        if not raw:
            field_of(name, tensor.datatype)
        headers[name] = (tensor.datatype, tensors.check_shape(name, list(tensor.shape)))
    model.check_inputs(headers, request.id)
    counts = {name: element_count(name, datatype, shape) for name, (datatype, shape) in headers.items()}
    check_bytes_elements(sum(counts[name] for name, (datatype, _) in headers.items() if datatype == "BYTES"), max_bytes_elements)
    if raw:
        size = sum(count * datatypes.ELEMENT_SIZE.get(headers[name][0], 4) for name, count in counts.items())
        inputs = await offload.run(size, _read_inputs, request, headers)
    else:  # how large the unread typed contents are, only parsing them tells
        inputs = await offload.off_loop(_read_inputs, request, headers)
    outputs = None
    if request.outputs:
        outputs = []
        for out in request.outputs:
            if "shared_memory_region" in out.parameters:
                raise ServerError("shared memory outputs are not supported by triserve", Code.UNSUPPORTED)
            count = _value(out.parameters["classification"]) if "classification" in out.parameters else 0
            outputs.append(RequestedOutput(out.name, class_count(out.name, count)))
    params = _values(request.parameters)
    priority, timeout = schedule_options(params)
    return InferRequest(
        inputs=inputs, outputs=outputs, id=request.id, priority=priority, timeout_us=timeout, parameters=params
    )


def _read_inputs(request: pb.ModelInferRequest, headers: dict[str, tuple[str, list[int]]]) -> dict[str, np.ndarray]:
    """The inputs' contents; typed contents are read only now, from the request's unread bytes."""
    raw = request.raw_input_contents
    if not raw:
        request = read_whole(request, pb.ModelInferRequest)
    inputs = {}
    for index, tensor in enumerate(request.inputs):
        datatype, shape = headers[tensor.name]
        if raw:
            inputs[tensor.name] = tensors.from_bytes(tensor.name, datatype, shape, raw[index])
        else:
            inputs[tensor.name] = from_contents(tensor.name, datatype, shape, tensor.contents)
    return inputs


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    """Every output as `raw_output_contents`, in output order (what Triton answers)."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    blobs = []
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=datatypes.from_numpy(array.dtype), shape=array.shape)
        blobs.append(tensors.to_bytes(array))
    message.raw_output_contents.extend(blobs)
    return message


def frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> GRPCFrontEnd:
    servicer = V2GRPC(dataplane, options.grpc.max_bytes_elements)

    def register(grpc_server: grpc.aio.Server) -> list[str]:
        handlers = generated_handlers(service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, servicer)
        for method in ("ModelInfer", "ModelStreamInfer"):  # typed contents are read after the checks
            handlers[method] = handlers[method]._replace(request_deserializer=SKIMMED_INFER_REQUEST.FromString)
        add_service(grpc_server, SERVICE, handlers)
        return [SERVICE]

    return GRPCFrontEnd(register, options.host, port, ready=dataplane.ready, max_message_bytes=options.grpc.max_message_bytes)
