"""KServe v2 / Triton gRPC front end: `inference.GRPCInferenceService` on tritonclient's own
generated messages, with the classification, statistics, model configuration and model
repository extensions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any, AsyncIterator, Mapping

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
from triserve import logs
from triserve.protocols.kserve import logging_settings, shared_memory, tensors, trace
from triserve.protocols.kserve.contents import field_of, from_contents
from triserve.protocols.kserve import predecode
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
from triserve.protocols.kserve.common import sequence_options
from triserve.protocols.kserve.common import find_model, load_model, poll_failure, stats_models
from triserve.protocols.kserve.common import extension_state
from triserve.protocols.kserve.statistics import statistics_json

log = logging.getLogger("triserve")

SERVICE = "inference.GRPCInferenceService"
# Triton's ModelInferHandler::Execute (server src/grpc/infer_handler.cc): UNSUPPORTED, UNIMPLEMENTED.
DECOUPLED_REFUSED = "ModelInfer RPC doesn't support models with decoupled transaction policy"
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
    def __init__(
        self,
        dataplane: DataPlane,
        max_bytes_elements: int = DEFAULT_GRPC_MAX_BYTES_ELEMENTS,
        shm: shared_memory.SystemSharedMemory | None = None,
        tracer: trace.Tracer | None = None,
        log_settings: logs.Settings | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.max_bytes_elements = max_bytes_elements
        # Shared with the HTTP front end of the same data plane unless given.
        self.shm = shm if shm is not None else shared_memory.registry(dataplane)
        self.tracer = tracer if tracer is not None else trace.tracer(dataplane)
        self.log_settings = log_settings

    def _check_model(self, name: str) -> None:
        find_model(self.dataplane, name, "")

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
        model = find_model(self.dataplane, request.name, request.version)
        return json_format.ParseDict(model_metadata(self.dataplane, model), pb.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=find_model(self.dataplane, request.name, request.version).config)

    @_rpc
    async def ModelStatistics(self, request, context):
        models = stats_models(self.dataplane, request.name, request.version)
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
        try:
            config, files = load_arguments(_values(request.parameters))
            for key, content in files.items():
                if not isinstance(content, bytes):  # over gRPC, file contents travel as bytes_param
                    raise invalid(f"parameter '{key}' must be a bytes_param with the file content")
        except ServerError as e:
            raise poll_failure(request.model_name, e) from None
        await load_model(self.dataplane, request.model_name, config, files)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context):
        parameters = _values(request.parameters)
        await self.dataplane.unload(request.model_name, bool(parameters.get("unload_dependents", False)))
        return pb.RepositoryModelUnloadResponse()

    # -- inference ----------------------------------------------------------------------------
    async def _infer(self, request: pb.ModelInferRequest, order: asyncio.Lock | None = None) -> pb.ModelInferResponse:
        # `order` (a stream's): the requests of a sequence are queued in the order they arrived.
        in_order = order if order is not None and "sequence_id" in request.parameters else contextlib.nullcontext()
        async with in_order:
            model = find_model(self.dataplane, request.model_name, request.model_version)
            core_request = await decode_infer_request(model, request, self.max_bytes_elements, self.shm)
            targets = output_targets(self.shm, request)
            core_request.trace = trace.CURRENT.get()
            # Looked up again: a reload may have retired `model` while the contents were read.
            model = find_model(self.dataplane, request.model_name, request.model_version)
            answer = self.dataplane.infer(model, core_request)
        response = await answer
        if targets:  # outputs the client asked for in its shared memory regions
            size = shared_memory.output_bytes(response.outputs, targets)
            await offload.run(size, shared_memory.write_outputs, response.outputs, targets, tensors.to_bytes)
        return encode_infer_response(response, targets)

    @_rpc
    async def ModelInfer(self, request, context):
        model = find_model(self.dataplane, request.model_name, request.model_version)
        if self.dataplane.is_decoupled(model):  # as Triton: before the request is made or traced
            raise ServerError(DECOUPLED_REFUSED, Code.UNSUPPORTED)
        sampled = self._sample(request, context)
        if sampled is None:
            return await self._infer(request)
        response = await self._traced(sampled, self._infer(request))
        context.add_done_callback(lambda _: self.tracer.finish_later(sampled, "GRPC_SEND_END"))
        return response

    def _sample(self, request: pb.ModelInferRequest, context) -> trace.Trace | None:
        """A trace for this request when the settings sample it, its read stamped."""
        sampled = self.tracer.sample(request.model_name, _metadata(context))
        if sampled is not None:
            # The handler runs once the message is read: its wait for it is not seen here.
            sampled.stamp("GRPC_WAITREAD_START")
            sampled.stamp("GRPC_WAITREAD_END")
        return sampled

    async def _traced(self, sampled: trace.Trace, answer):
        """Await `answer` with `sampled` as the current trace, then render its tensors (off the
        loop when large) and stamp GRPC_SEND_START; on failure the trace is written as it is."""
        token = trace.CURRENT.set(sampled)
        try:
            response = await answer
            await self.tracer.render(sampled)
        except BaseException:
            self.tracer.finish_later(sampled)
            raise
        finally:
            trace.CURRENT.reset(token)
        sampled.stamp("GRPC_SEND_START")
        return response

    async def _stream_decoupled(self, request: pb.ModelInferRequest, answers: asyncio.Queue,
                                context=None, traced: dict | None = None) -> bool:
        """A decoupled model's request: each of its responses (or error responses) onto the
        stream as it comes; False for other models. A sampled request's trace ends once its
        last response is written (`traced`: a message of the stream -> its trace, and whether
        the trace ends once that message is written)."""
        model = find_model(self.dataplane, request.model_name, request.model_version)
        if not self.dataplane.is_decoupled(model):
            return False
        sampled = self._sample(request, context) if traced is not None else None
        last = None
        try:
            core_request = await decode_infer_request(model, request, self.max_bytes_elements, self.shm)
            core_request.trace = sampled
            async for response in self.dataplane.stream(model, core_request):
                if isinstance(response, ServerError):
                    last = _stream_error(request, response.message)
                else:
                    last = pb.ModelStreamInferResponse(infer_response=encode_infer_response(response))
                if sampled is not None:
                    if sampled.first("INFER_RESPONSE_COMPLETE") is None:  # Triton: at the first response
                        sampled.stamp("INFER_RESPONSE_COMPLETE")
                    await self.tracer.render(sampled)
                    sampled.stamp("GRPC_SEND_START")
                    traced[id(last)] = (sampled, False)
                answers.put_nowait(last)
        except BaseException:
            if sampled is not None:
                self.tracer.finish_later(sampled)
            raise
        if sampled is not None:
            if last is not None and id(last) in traced:  # not written yet: the trace ends with it
                traced[id(last)] = (sampled, True)
            else:  # written already, or no response at all (only the final flag)
                self.tracer.finish_later(sampled)
        return True

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently; each answer (or its error) is written as soon as it is ready."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task] = set()
        order = asyncio.Lock()
        # id of an answer -> (its trace, whether the trace ends once the answer is written)
        traced: dict[int, tuple[trace.Trace, bool]] = {}

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                if await self._stream_decoupled(request, answers, context, traced):
                    return
                sampled = self._sample(request, context)  # each request of the stream, as ModelInfer
                if sampled is None:
                    response = await self._infer(request, order)
                else:
                    response = await self._traced(sampled, self._infer(request, order))
                message = pb.ModelStreamInferResponse(infer_response=response)
                if sampled is not None:
                    traced[id(message)] = (sampled, True)
                answers.put_nowait(message)
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
                sampled, ends = traced.pop(id(item), (None, False))
                if sampled is not None:
                    sampled.stamp("GRPC_SEND_END")
                    if ends:
                        self.tracer.finish_later(sampled)
            await reader  # re-raises a failed read
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
            for sampled, ends in traced.values():  # answers never written: the traces end as they are
                if ends:
                    self.tracer.finish_later(sampled)
            traced.clear()


def _metadata(context) -> dict[str, str]:
    """The call's text metadata (where a W3C traceparent comes), keys lower-case."""
    try:
        return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    except Exception:  # a context without metadata (tests calling the servicer directly)
        return {}


def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


# The shared memory, trace and logging extensions: name -> what answers (servicer, request).
_EXTENSIONS = {
    "SystemSharedMemoryStatus": lambda self, r: shared_memory.grpc_system_status(self.shm, r, pb),
    "SystemSharedMemoryRegister": lambda self, r: shared_memory.grpc_system_register(self.shm, r, pb),
    "SystemSharedMemoryUnregister": lambda self, r: shared_memory.grpc_system_unregister(self.shm, r, pb),
    "CudaSharedMemoryStatus": lambda self, r: shared_memory.grpc_cuda_status(self.shm, r, pb),
    "CudaSharedMemoryRegister": lambda self, r: shared_memory.grpc_cuda_register(self.shm, r, pb),
    "CudaSharedMemoryUnregister": lambda self, r: shared_memory.grpc_cuda_unregister(self.shm, r, pb),
    "TraceSetting": lambda self, r: trace.grpc_setting(self.tracer, self._check_model, r, pb),
    "LogSettings": lambda self, r: logging_settings.grpc_settings(r, pb, self.log_settings),
}


def _extension(name: str, answer):
    async def method(self, request, context):
        return answer(self, request)

    method.__name__ = name
    return _rpc(method)


for _name, _answer in _EXTENSIONS.items():
    setattr(V2GRPC, _name, _extension(_name, _answer))


def _value(parameter) -> Any:
    """The set member of an InferParameter / ModelRepositoryParameter oneof (None if unset)."""
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None


def _values(parameters) -> dict[str, Any]:
    return {key: _value(p) for key, p in parameters.items()}


async def decode_infer_request(
    model: Model,
    request: pb.ModelInferRequest,
    max_bytes_elements: int = DEFAULT_GRPC_MAX_BYTES_ELEMENTS,
    shm: shared_memory.SystemSharedMemory | None = None,
) -> InferRequest:
    """Inputs from `raw_input_contents` (one per input not in shared memory, in order), each
    input's typed `contents`, or a registered shared memory region, read only once their names,
    datatypes and shapes passed the model's checks (large contents are read off the event loop)."""
    raw = request.raw_input_contents
    in_memory = sum(1 for t in request.inputs if "shared_memory_region" not in t.parameters)
    if raw and len(raw) != in_memory:
        raise invalid(
            f"expected {in_memory} raw_input_contents, one per input, but got {len(raw)}"
            f" for model '{request.model_name}'"
        )
    views: dict[str, memoryview] = {}  # inputs in shared memory
    if not request.inputs:
        raise invalid("the request must have at least one input")
    headers: dict[str, tuple[str, list[int]]] = {}
    for tensor in request.inputs:
        name = tensor.name
        if name in headers:
            raise invalid(f"input '{name}' is given twice")
        location = shared_memory.grpc_location(tensor)
        if location is not None:
            if tensor.HasField("contents"):
                raise invalid(
                    f"unexpected 'content' provided when using shared memory for input tensor '{name}'"
                    f" for model '{request.model_name}'"
                )
            views[name] = shared_memory.input_view(shm, *location)
            headers[name] = (tensor.datatype, tensors.check_shape(name, list(tensor.shape)))
            continue
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
        # fixed-size raw contents become views of the message's bytes (no work, no thread hop)
        size = sum(tensors.read_cost(headers[name][0], count * datatypes.ELEMENT_SIZE.get(headers[name][0], 4))
                   for name, count in counts.items())
        inputs = await offload.run(size, _read_inputs, request, headers, views)
    elif len(views) == len(headers):  # every input in shared memory
        size = sum(len(v) for v in views.values())
        inputs = await offload.run(size, _read_inputs, request, headers, views)
    else:  # how large the unread typed contents are, only parsing them tells
        inputs = await predecode.typed_contents(request, headers, views)  # in a worker process when large
        if inputs is None:
            inputs = await offload.off_loop(_read_inputs, request, headers, views)
    outputs = None
    if request.outputs:
        outputs = []
        for out in request.outputs:
            if shared_memory.grpc_location(out) is not None and "classification" in out.parameters:
                raise invalid("output can't set both 'shared_memory_region' and 'classification'")
            count = _value(out.parameters["classification"]) if "classification" in out.parameters else 0
            outputs.append(RequestedOutput(out.name, class_count(out.name, count)))
    params = _values(request.parameters)
    priority, timeout = schedule_options(params)
    return InferRequest(
        inputs=inputs, outputs=outputs, id=request.id, priority=priority, timeout_us=timeout, parameters=params,
        **sequence_options(params),
    )


def _read_inputs(
    request: pb.ModelInferRequest, headers: dict[str, tuple[str, list[int]]], views: dict[str, memoryview] | None = None
) -> dict[str, np.ndarray]:
    """The inputs' contents; typed contents are read only now, from the request's unread bytes."""
    views = views or {}
    raw = request.raw_input_contents
    if not raw and len(views) < len(request.inputs):
        request = read_whole(request, pb.ModelInferRequest)
    inputs = {}
    index = 0  # into raw_input_contents: the inputs not in shared memory, in order
    for tensor in request.inputs:
        datatype, shape = headers[tensor.name]
        if tensor.name in views:
            inputs[tensor.name] = tensors.from_bytes(tensor.name, datatype, shape, views[tensor.name])
        elif raw:
            inputs[tensor.name] = tensors.from_bytes(tensor.name, datatype, shape, raw[index])
            index += 1
        else:
            inputs[tensor.name] = from_contents(tensor.name, datatype, shape, tensor.contents)
    return inputs


def output_targets(shm: shared_memory.SystemSharedMemory | None, request: pb.ModelInferRequest) -> dict[str, Any]:
    """The requested outputs that go to shared memory regions, checked against them now."""
    targets = {}
    for out in request.outputs:
        location = shared_memory.grpc_location(out)
        if location is not None:
            targets[out.name] = shared_memory.output_target(shm, *location)
    return targets


def encode_infer_response(response: InferResponse, in_shared_memory: Mapping[str, Any] = {}) -> pb.ModelInferResponse:
    """Every output as `raw_output_contents`, in output order (what Triton answers); outputs
    written to the client's shared memory regions have empty contents, as in Triton."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    blobs = []
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=datatypes.from_numpy(array.dtype), shape=array.shape)
        blobs.append(b"" if name in in_shared_memory else tensors.to_bytes(array))
    message.raw_output_contents.extend(blobs)
    return message


def frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> GRPCFrontEnd:
    shm, tracer = extension_state(dataplane, options)
    servicer = V2GRPC(dataplane, options.grpc.max_bytes_elements, shm, tracer)

    def register(grpc_server: grpc.aio.Server) -> list[str]:
        handlers = generated_handlers(service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, servicer)
        for method in ("ModelInfer", "ModelStreamInfer"):  # typed contents are read after the checks
            handlers[method] = handlers[method]._replace(request_deserializer=SKIMMED_INFER_REQUEST.FromString)
        large = functools.partial(predecode.infer_request, max_bytes_elements=options.grpc.max_bytes_elements)
        add_service(grpc_server, SERVICE, handlers, large={"ModelInfer": large, "ModelStreamInfer": large})
        return [SERVICE]

    return GRPCFrontEnd(register, options.host, port, ready=dataplane.ready, max_message_bytes=options.grpc.max_message_bytes)
