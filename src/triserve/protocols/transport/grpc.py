"""A grpc.aio server on the shared event loop, with raised message limits and the standard
grpc.health.v1 service answering SERVING while the server is ready; services whose methods
decode their own requests (a message that does not parse is INVALID_ARGUMENT, and one that is
long to parse is parsed off the event loop: on a worker thread, or, for methods that name a
`large` decoder, in a worker process when it is over processes.LARGE bytes)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Callable, Collection, Mapping

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from triserve.errors import Code, invalid
from triserve.options import DEFAULT_GRPC_MAX_MESSAGE_BYTES
from triserve.protocols.transport import offload, processes
from triserve.protocols.transport.processes import WithPredecoded, WorkerStopped

GRACE_SECONDS = 30  # as long as the HTTP front end waits for in-flight requests
# Parsing a top-level `bytes` field (raw_input_contents) is one copy of its bytes, about this many
# times cheaper per byte than parsing other fields (a 600 KB tensor: 15 us against 2.7 ms for
# as many bytes of BYTES elements), so it counts this much less towards offload.OFF_LOOP_SIZE.
COPY_DISCOUNT = 32
SCAN_FIELDS = 64  # top-level fields parse_work looks at; the bytes after them count in full
HEALTH_REFRESH_SECONDS = 1.0

# Triton's GrpcStatusUtil::CodeToStatus.
GRPC_STATUS = {
    Code.INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
    Code.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
}

# What a call that failed inside the server answers; the log has the details (no reprs or paths in answers).
INTERNAL_ERROR = "internal error: the server log has the details"

# register(server) adds the servicers and returns their full service names (for health checks).
Register = Callable[[grpc.aio.Server], list[str]]


# In a worker process: a message's bytes to (the bytes of the same message without its large
# tensor values, what a worker process read of each input's values, fields taken out of the
# message and given back as they are: see WithPredecoded), or None to leave the message to the
# method's own parser.
Large = Callable[[bytes], "tuple[bytes, dict[str, processes.Predecoded], dict[str, Any]] | None"]


def add_service(
    server: grpc.aio.Server,
    service: str,
    handlers: Mapping[str, grpc.RpcMethodHandler],
    large: Mapping[str, Large] | None = None,
) -> None:
    """Serve `service` (its full name) with these method handlers, each through `decoding`
    (with its `large` decoder, for the methods that have one)."""
    large = large or {}
    decoded = {method: decoding(handler, large.get(method)) for method, handler in handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, decoded),))
    server.add_registered_method_handlers(service, decoded)


def generated_handlers(add_to_server: Callable[[Any, Any], None], servicer: Any) -> dict[str, grpc.RpcMethodHandler]:
    """The method handlers that a generated `add_*Servicer_to_server(servicer, server)` registers."""

    class Capture:
        def __init__(self) -> None:
            self.handlers: dict[str, grpc.RpcMethodHandler] = {}

        def add_generic_rpc_handlers(self, generic_handlers) -> None:
            pass  # the same handlers also come to add_registered_method_handlers

        def add_registered_method_handlers(self, service: str, handlers) -> None:
            self.handlers = dict(handlers)

    capture = Capture()
    add_to_server(servicer, capture)
    return capture.handlers


def decoding(handler: grpc.RpcMethodHandler, large: Large | None = None) -> grpc.RpcMethodHandler:
    """The same method, taking the request bytes and parsing them itself: grpc would answer a
    message that does not parse with UNKNOWN ("Unexpected DecodeError") and, in a stream, never
    end it; here the call ends at once with INVALID_ARGUMENT. Messages long to parse (parse_work:
    a large tensor in a `bytes` field is only copied) are parsed on a worker thread, not on the
    event loop; with a `large` decoder, messages over processes.LARGE bytes go to it in a worker
    process (protobuf holds the GIL while it parses millions of elements, a thread would not
    free the loop), and the method gets a WithPredecoded: the message parsed from what the
    decoder left of it, and the values it read."""
    parse = handler.request_deserializer
    if parse is None:
        return handler
    copied = _bytes_fields(parse)

    async def decode(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            if large is not None and len(data) > processes.LARGE:
                decoded = await processes.run(large, data)
                if decoded is not None:
                    header, predecoded, overrides = decoded
                    return WithPredecoded(await offload.run(len(header), parse, header), predecoded, overrides)
            return await offload.run(parse_work(data, copied), parse, data)
        except WorkerStopped as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, e.message)
        except Exception:  # whatever the parser raises, it is about the client's bytes
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not {_a_valid(parse)}")

    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await unary(await decode(data, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, None, handler.response_serializer)
    if handler.stream_stream is not None:
        stream = handler.stream_stream

        async def stream_stream(messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async def requests() -> AsyncIterator[Any]:
                async for data in messages:
                    yield await decode(data, context)

            async for response in stream(requests(), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, None, handler.response_serializer)
    if handler.unary_stream is not None:
        server_stream = handler.unary_stream

        async def unary_stream(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in server_stream(await decode(data, context), context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, None, handler.response_serializer)
    raise TypeError("only unary-unary, unary-stream and stream-stream methods are served")


def parse_work(data: bytes, copied: Collection[int]) -> int:
    """What parsing `data` costs, in bytes as offload.run counts them: the top-level fields whose
    numbers are in `copied` (`bytes` fields) count 1/COPY_DISCOUNT of their length, the rest in
    full. Only the first SCAN_FIELDS top-level fields are looked at, so that the scan stays short
    on the event loop; bytes that do not scan as protobuf count in full (the parser says why)."""
    size = len(data)
    discounted = position = 0
    try:
        for _ in range(SCAN_FIELDS):
            if position >= size:
                break
            key, position = _varint(data, position)
            wire = key & 7
            if wire == 2:  # length-delimited
                length, position = _varint(data, position)
                if key >> 3 in copied:
                    discounted += length
                position += length
            elif wire == 0:
                _, position = _varint(data, position)
            elif wire in (1, 5):  # 64- and 32-bit
                position += 8 if wire == 1 else 4
            else:
                return size
            if position > size:
                return size
    except IndexError:  # a varint cut short
        return size
    return size - discounted + discounted // COPY_DISCOUNT


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise IndexError("varint longer than 10 bytes")


def _message_of(parse: Callable[[bytes], Any]) -> Any:
    """The descriptor of the message `parse` (a generated class's FromString) reads, else None."""
    return getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)


def _bytes_fields(parse: Callable[[bytes], Any]) -> frozenset[int]:
    """The numbers of the top-level `bytes` fields of the message `parse` reads (none known: empty)."""
    message = _message_of(parse)
    if message is None:
        return frozenset()
    return frozenset(f.number for f in message.fields if f.type == f.TYPE_BYTES)


def _a_valid(parse: Callable[[bytes], Any]) -> str:
    message = _message_of(parse)
    return f"a valid {message.full_name} message" if message is not None else "a valid request message"


# -- requests read in two steps -------------------------------------------------------------
def skimmed(message: type[Message], skip: Mapping[str, Collection[str]]) -> type[Message]:
    """A class for the same wire message that leaves fields unread: `skip` names fields by the
    full name of their message type. A skipped message field reads as its bytes (one copy, no
    parsing; presence still shows), any other skipped field as unknown; `read_whole` gives the
    complete message later. What takes a parser long (millions of BYTES elements) can so be
    refused by the request's header alone."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: Any) -> None:
        if file.name in added:
            return
        added.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        _skip_fields(proto.message_type, proto.package, skip)
        pool.Add(proto)

    add(message.DESCRIPTOR.file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(message.DESCRIPTOR.full_name))


def _skip_fields(types: Any, scope: str, skip: Mapping[str, Collection[str]]) -> None:
    for proto in types:
        name = f"{scope}.{proto.name}" if scope else proto.name
        _skip_fields(proto.nested_type, name, skip)
        fields = skip.get(name, ())
        kept = []
        for field in proto.field:
            if field.name not in fields:
                kept.append(field)
            elif field.type == descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE:
                # bytes, alone in a oneof: a oneof member keeps presence (HasField) in proto3
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                field.ClearField("type_name")
                field.oneof_index = len(proto.oneof_decl)
                proto.oneof_decl.add(name=f"skipped_{field.name}")
                kept.append(field)
        del proto.field[:]
        proto.field.extend(kept)


def read_whole(skimmed_request: Message, message: type[Message]) -> Message:
    """The complete message from a skimmed one (its unread bytes parsed now): slow for large
    messages, so call it through offload.run."""
    try:
        return message.FromString(skimmed_request.SerializeToString())
    except Exception:  # the unread bytes were never checked: they may not parse
        raise invalid(f"the request is not a valid {message.DESCRIPTOR.full_name} message") from None


def check_bytes_elements(count: int, limit: int) -> None:
    """A request's BYTES elements (one Python object each once read) are capped before any is read."""
    if count > limit:
        raise invalid(
            f"the request has {count} BYTES tensor elements, more than the {limit} allowed in one gRPC"
            " request (--grpc-max-bytes-elements)"
        )


class ReadinessHealth(HealthServicer):
    """grpc.health.v1 where "" and every served service follow the server's readiness."""

    def __init__(self, ready: Callable[[], bool], services: list[str]) -> None:
        super().__init__()
        self._ready = ready
        self._services = ["", *services]

    async def refresh(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self._ready() else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self._services:
            await self.set(service, status)

    async def Check(self, request, context):
        await self.refresh()  # readiness changes with model loads; answer what holds now
        return await super().Check(request, context)


class GRPCFrontEnd:
    def __init__(
        self,
        register: Register,
        host: str,
        port: int,
        ready: Callable[[], bool],
        max_message_bytes: int = DEFAULT_GRPC_MAX_MESSAGE_BYTES,
    ) -> None:
        self.register = register
        self.address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        self.ready = ready
        self.max_message_bytes = max_message_bytes
        self.grace = GRACE_SECONDS  # seconds calls in flight get to finish on stop()
        self.server: grpc.aio.Server | None = None
        self.health: ReadinessHealth | None = None
        self._refresher: asyncio.Task | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared silently
            ]
        )
        services = self.register(self.server)
        self.health = ReadinessHealth(self.ready, services)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        try:
            self.server.add_insecure_port(self.address)
        except RuntimeError as e:
            raise OSError(f"could not listen on {self.address}: {e}") from None
        await self.server.start()
        await self.health.refresh()
        self._refresher = asyncio.create_task(self._refresh_health())

    async def _refresh_health(self) -> None:
        """Keeps Watch streams current; Check reads readiness itself."""
        while True:
            await asyncio.sleep(HEALTH_REFRESH_SECONDS)
            await self.health.refresh()

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.server is not None:
            # New calls are refused; calls in flight get the grace period to finish.
            await self.server.stop(self.grace)
