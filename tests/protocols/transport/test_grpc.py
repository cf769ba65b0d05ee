"""What both gRPC front ends share: methods that parse their own requests (garbage is
INVALID_ARGUMENT, in a stream too), requests read in two steps, and the cap on BYTES elements."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb

from tests.conftest import free_port
from triserve.errors import ServerError
from triserve.protocols.transport.grpc import (
    COPY_DISCOUNT,
    SCAN_FIELDS,
    add_service,
    check_bytes_elements,
    parse_work,
    read_whole,
    skimmed,
)
from triserve.protocols.transport.offload import OFF_LOOP_SIZE

SKIMMED = skimmed(pb.ModelInferRequest, {"inference.ModelInferRequest.InferInputTensor": ["contents"]})


def typed_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id="7")
    tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 3])
    tensor.contents.bytes_contents.extend([b"a", b"", b"c"])
    request.inputs.add(name="EMPTY", datatype="INT32", shape=[0])
    return request


def test_a_skimmed_request_has_its_header_but_not_the_skipped_contents():
    skim = SKIMMED.FromString(typed_request().SerializeToString())
    assert skim.DESCRIPTOR.full_name == "inference.ModelInferRequest"
    assert (skim.model_name, skim.id, skim.inputs[0].name, list(skim.inputs[0].shape)) == ("m", "7", "TEXT", [1, 3])
    assert skim.inputs[0].HasField("contents") and not skim.inputs[1].HasField("contents")
    assert isinstance(skim.inputs[0].contents, bytes)  # unread


def test_read_whole_gives_the_complete_message():
    skim = SKIMMED.FromString(typed_request().SerializeToString())
    assert read_whole(skim, pb.ModelInferRequest) == typed_request()


def test_unread_bytes_that_do_not_parse_are_refused_when_read():
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x")
    data = request.SerializeToString() + b"\x2a\x04\x2a\x02\x0a\x05"  # an input whose contents are cut short
    skim = SKIMMED.FromString(data)  # the header parses: the broken part was not read
    with pytest.raises(ServerError) as e:
        read_whole(skim, pb.ModelInferRequest)
    assert e.value.message == "the request is not a valid inference.ModelInferRequest message"


def test_raw_tensor_bytes_count_as_a_copy_and_everything_else_in_full():
    copied = {7}  # ModelInferRequest.raw_input_contents
    raw = pb.ModelInferRequest(model_name="m", raw_input_contents=[bytes(32 << 20)]).SerializeToString()
    assert parse_work(raw, copied) == len(raw) - (32 << 20) + (32 << 20) // COPY_DISCOUNT
    assert parse_work(raw, copied) > OFF_LOOP_SIZE  # 32 MiB is still too long a copy for the loop
    small = pb.ModelInferRequest(model_name="m", raw_input_contents=[bytes(600_000)]).SerializeToString()
    assert parse_work(small, copied) < OFF_LOOP_SIZE
    elements = typed_request()
    elements.inputs[0].contents.bytes_contents.extend([b"x"] * 100_000)
    data = elements.SerializeToString()
    assert parse_work(data, copied) == len(data)  # BYTES elements are parsed one by one


def test_only_the_first_top_level_fields_are_scanned_and_what_does_not_scan_counts_in_full():
    many = pb.ModelInferRequest(raw_input_contents=[b""] * SCAN_FIELDS + [bytes(1 << 20)]).SerializeToString()
    assert parse_work(many, {7}) == len(many)  # the large field comes after the fields scanned
    cut = pb.ModelInferRequest(raw_input_contents=[bytes(1 << 20)]).SerializeToString()[:-10]
    assert parse_work(cut, {7}) == len(cut)
    assert parse_work(b"\x3a\xff\xff", {7}) == 3  # a length cut short
    assert parse_work(b"\x0b\x0c", {7}) == 2  # a group (wire type 3): not scanned


def test_bytes_elements_are_capped():
    check_bytes_elements(4, 4)
    with pytest.raises(ServerError) as e:
        check_bytes_elements(5, 4)
    assert "5 BYTES tensor elements, more than the 4 allowed in one gRPC request (--grpc-max-bytes-elements)" in e.value.message


@pytest.mark.anyio
async def test_methods_parse_their_requests_and_refuse_garbage_with_invalid_argument():
    async def echo(request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        return pb.ModelInferResponse(id=request.id)

    async def stream(requests, context):
        async for request in requests:
            yield pb.ModelInferResponse(id=request.id)

    port = free_port()
    server = grpc.aio.server()
    serialize = pb.ModelInferResponse.SerializeToString
    add_service(server, "test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(echo, pb.ModelInferRequest.FromString, serialize),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, pb.ModelInferRequest.FromString, serialize),
    })
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = channel.unary_unary("/test.Echo/Unary", response_deserializer=pb.ModelInferResponse.FromString)
            assert (await unary(pb.ModelInferRequest(id="1").SerializeToString())).id == "1"
            raw = pb.ModelInferRequest(id="2", raw_input_contents=[bytes(1 << 20)])  # parsed on the loop: a copy
            assert (await unary(raw.SerializeToString())).id == "2"
            elements = pb.ModelInferRequest(id="2b")  # parsed on a worker thread: 100,000 elements
            elements.inputs.add(name="TEXT", datatype="BYTES", shape=[100_000]).contents.bytes_contents.extend(
                [b"element"] * 100_000)
            assert (await unary(elements.SerializeToString())).id == "2b"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await unary(b"\x0a\x05ab")
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details() == "the request is not a valid inference.ModelInferRequest message"
            call = channel.stream_stream("/test.Echo/Stream", response_deserializer=pb.ModelInferResponse.FromString)()
            await call.write(pb.ModelInferRequest(id="3").SerializeToString())
            assert (await call.read()).id == "3"
            await call.write(b"\x0a\x05ab")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call.read()
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(0)
