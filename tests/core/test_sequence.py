"""The sequence batcher (core/sequence.py): Triton's sequence_batching over real ONNX models, through
the data plane, the v2 HTTP app and the in-process gRPC server."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port
from tests.inprocess import (
    ACCUMULATE_CONFIG,
    SIMPLE_SEQUENCE_CONFIG,
    accumulate_onnx,
    dyna_sequence_repository,
    sequence_repository,
    simple_sequence_onnx,
    triton_dataplane,
)
from triserve.core.dataplane import DataPlane
from triserve.core.sequence import SequenceBatcher, SequencePolicy
from triserve.core.stats import ModelStats
from triserve.core.types import InferRequest
from triserve.errors import ServerError
from triserve.options import ServerOptions
from triserve.protocols.kserve import grpc as v2grpc
from triserve.protocols.kserve.rest import V2HTTP

pytestmark = pytest.mark.anyio


def parse_config(text: str) -> mc.ModelConfig:
    config = text_format.Parse(text, mc.ModelConfig())
    config.platform = config.platform or "onnxruntime_onnx"
    return config


def start_error(corrid, model: str) -> str:
    """Triton's words (core sequence_batch_scheduler.cc) for a request outside a started sequence."""
    return (
        f"inference request for sequence {corrid} to model '{model}' must specify the START flag on the first"
        " request of the sequence"
    )


class Clock:
    """An injectable clock (nanoseconds) that moves only when the test says so."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def step(value: int, corrid, start: bool = False, end: bool = False) -> InferRequest:
    return InferRequest(
        {"INPUT": np.array([[value]], dtype=np.int32)}, sequence_id=corrid, sequence_start=start, sequence_end=end
    )


async def answer(dataplane: DataPlane, model: str, value: int, corrid, start=False, end=False) -> int:
    response = await dataplane.infer(dataplane.resolve(model), step(value, corrid, start, end))
    return int(response.outputs["OUTPUT"][0, 0])


def write_accumulate(root: Path, config: str) -> None:
    accumulate_onnx(root / "accumulate" / "1" / "model.onnx")
    (root / "accumulate" / "config.pbtxt").write_text(config)


# -- Triton's simple_sequence example, as its example clients drive it ----------------------------------


async def test_simple_sequence_answers_as_tritons_http_example_expects(tmp_path):
    """What simple_http_sequence_sync_infer_client.py sends (ids 1000, 1001 and a uuid4 string)
    and checks: OUTPUT = READY * (INPUT + START)."""
    values = [11, 7, 5, 3, 2, 0, 1]
    async with triton_dataplane(sequence_repository(tmp_path)) as dataplane:
        transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def send(corrid, first: int, sign: int) -> list[int]:
                results = []
                sent = [first] + [sign * v for v in values]
                for i, value in enumerate(sent):
                    body = {
                        "inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [value]}],
                        "outputs": [{"name": "OUTPUT"}],
                        "parameters": {
                            "sequence_id": corrid, "sequence_start": i == 0, "sequence_end": i == len(sent) - 1,
                        },
                    }
                    response = await client.post("/v2/models/simple_sequence/infer", json=body)
                    assert response.status_code == 200, response.text
                    results.append(response.json()["outputs"][0]["data"][0])
                return results

            assert await send(1000, 0, 1) == [1, *values]
            assert await send(1001, 100, -1) == [101, *(-v for v in values)]
            assert await send(str(uuid.uuid4()), 20, -1) == [21, *(-v for v in values)]

            # After its end, the id is unknown again: Triton's error, as a 400.
            body = {
                "inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [1]}],
                "parameters": {"sequence_id": 1000},
            }
            response = await client.post("/v2/models/simple_sequence/infer", json=body)
            assert response.status_code == 400
            assert response.json() == {"error": start_error(1000, "simple_sequence")}
            response = await client.get("/v2")
            assert "sequence" in response.json()["extensions"]


async def test_grpc_stream_keeps_each_sequences_order(tmp_path):
    """simple_grpc_sequence_stream_infer_client.py's pattern: two sequences interleaved on one
    stream, every request sent before any answer is read."""
    values = [11, 7, 5, 3, 2, 0, 1]
    async with triton_dataplane(sequence_repository(tmp_path)) as dataplane:
        port = free_port()
        frontend = v2grpc.frontend(dataplane, ServerOptions(), port)
        await frontend.start()
        try:
            async with aioclient.InferenceServerClient(f"127.0.0.1:{port}") as client:

                def request(value: int, corrid, start: bool, end: bool, request_id: str) -> dict:
                    tensor = aioclient.InferInput("INPUT", [1, 1], "INT32")
                    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
                    return {
                        "model_name": "accumulate", "inputs": [tensor], "request_id": request_id,
                        "sequence_id": corrid, "sequence_start": start, "sequence_end": end,
                    }

                async def requests():
                    for i, value in enumerate(values):
                        for corrid, sign in ((42, 1), ("forty-two", -1)):
                            yield request(sign * value, corrid, i == 0, i == len(values) - 1, f"{corrid}/{i}")

                got: dict[str, list[int]] = {"42": [], "forty-two": []}
                async for result, error in client.stream_infer(requests()):
                    assert error is None
                    corrid, _, _ = result.get_response().id.partition("/")
                    got[corrid].append(int(result.as_numpy("OUTPUT")[0, 0]))
                    if sum(map(len, got.values())) == 2 * len(values):
                        break
            assert got["42"] == list(np.cumsum(values))
            assert got["forty-two"] == list(-np.cumsum(values))

            # A plain ModelInfer of an unknown sequence: Triton's error, INVALID_ARGUMENT.
            async with aioclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
                with pytest.raises(InferenceServerException) as e:
                    await client.infer(**request(1, 7, False, False, ""))
                assert start_error(7, "accumulate") in e.value.message()
                assert e.value.status() == "StatusCode.INVALID_ARGUMENT"

            # A flag of the wrong parameter type is refused, not taken as false.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                message = pb.ModelInferRequest(model_name="accumulate")
                message.inputs.add(name="INPUT", datatype="INT32", shape=[1, 1])
                message.raw_input_contents.append(np.array([[1]], np.int32).tobytes())
                message.parameters["sequence_id"].int64_param = 8
                message.parameters["sequence_start"].int64_param = 1
                with pytest.raises(grpc.aio.AioRpcError) as rpc:
                    await service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message)
                assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "Unable to parse 'sequence_start'" in rpc.value.details()
        finally:
            await frontend.stop()


# -- state across many sequences --------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["direct", "oldest"])
async def test_state_of_100_interleaved_sequences_on_2_instances(tmp_path, strategy):
    """100 sequences at once over 2 instances of 8 slots each (oldest: 4 candidate sequences
    each): the rest wait in the backlog; every answer is its own sequence's running sum."""
    config = ACCUMULATE_CONFIG
    if strategy == "oldest":
        config = config.replace(
            "max_sequence_idle_microseconds: 60000000",
            "max_sequence_idle_microseconds: 60000000\n  oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2, 4 ] }",
        )
    write_accumulate(tmp_path, config)
    rng = random.Random(13)
    plans = {corrid: [rng.randint(-50, 50) for _ in range(rng.randint(1, 6))] for corrid in range(1, 101)}
    async with triton_dataplane(tmp_path) as dataplane:
        batcher = dataplane.resolve("accumulate").scheduler
        assert isinstance(batcher, SequenceBatcher)
        backlogged = 0

        async def run(corrid: int, values: list[int]) -> list[int]:
            nonlocal backlogged
            answers = []
            for i, value in enumerate(values):
                pending = dataplane.infer(dataplane.resolve("accumulate"), step(value, corrid, i == 0, i == len(values) - 1))
                backlogged = max(backlogged, len(batcher.backlog))
                answers.append(int((await pending).outputs["OUTPUT"][0, 0]))
            return answers

        results = await asyncio.gather(*(run(c, v) for c, v in plans.items()))
        for (corrid, values), got in zip(plans.items(), results):
            assert got == list(np.cumsum(values)), corrid
        assert all(n > 0 for n in batcher.executions)  # both instances ran sequences
        assert backlogged > 0  # more sequences than slots: some waited for a slot
        assert not batcher.active and not batcher.backlog
        free = sorted(batcher._free)
        assert len(free) == 2 * batcher.policy.slots  # every slot came back
        assert batcher.policy.slots == (4 if strategy == "oldest" else 8)


async def test_initial_state_from_a_data_file_and_restart_resets_state(tmp_path):
    config = ACCUMULATE_CONFIG.replace(
        "dims: [ 1 ] } ]\n}",
        'dims: [ 1 ] initial_state { data_type: TYPE_INT32 dims: [ 1 ] name: "hundred" data_file: "hundred.bin" } } ]\n}',
    )
    write_accumulate(tmp_path, config)
    (tmp_path / "accumulate" / "initial_state").mkdir()
    (tmp_path / "accumulate" / "initial_state" / "hundred.bin").write_bytes(np.array([100], dtype=np.int32).tobytes())
    async with triton_dataplane(tmp_path) as dataplane:
        assert await answer(dataplane, "accumulate", 5, 9, start=True) == 105
        assert await answer(dataplane, "accumulate", 1, 9) == 106
        # A new START on a running sequence starts it over (Triton logs the conflict).
        assert await answer(dataplane, "accumulate", 2, 9, start=True) == 102
        assert await answer(dataplane, "accumulate", 3, 9, end=True) == 105


# -- idle sequences --------------------------------------------------------------------------------------


async def test_an_idle_sequence_loses_its_slot_to_the_backlog(tmp_path):
    config = (
        ACCUMULATE_CONFIG.replace("max_batch_size: 8", "max_batch_size: 1")
        .replace("max_sequence_idle_microseconds: 60000000", "max_sequence_idle_microseconds: 1000")
        .replace("count: 2", "count: 1")
    )
    write_accumulate(tmp_path, config)
    async with triton_dataplane(tmp_path) as dataplane:
        model = dataplane.resolve("accumulate")
        batcher = model.scheduler
        clock = batcher.clock = Clock()
        assert await answer(dataplane, "accumulate", 1, "a", start=True) == 1  # "a" holds the only slot
        waiting = model.infer(step(5, "b", start=True))  # queued now, in the backlog
        assert [s.corrid for s in batcher.backlog] == ["b"]

        clock.ns += 1000 * 1000  # exactly the idle limit: not yet idle
        assert batcher.reap() == []
        assert [s.corrid for s in batcher.backlog] == ["b"]

        clock.ns += 1
        assert batcher.reap() == ["a"]  # "a" idled out; "b" takes the slot
        assert int((await waiting).outputs["OUTPUT"][0, 0]) == 5
        with pytest.raises(ServerError) as e:
            await answer(dataplane, "accumulate", 1, "a")
        assert e.value.message == start_error("a", "accumulate")

        # "a" starts over behind "b", which still holds the slot, and runs once "b" ends.
        again = model.infer(step(10, "a", start=True))
        assert [s.corrid for s in batcher.backlog] == ["a"]
        assert await answer(dataplane, "accumulate", 1, "b", end=True) == 6
        assert int((await again).outputs["OUTPUT"][0, 0]) == 10
        assert await answer(dataplane, "accumulate", 1, "a", end=True) == 11


async def test_a_request_for_an_idled_out_sequence_is_refused_even_with_free_slots(tmp_path):
    write_accumulate(tmp_path, ACCUMULATE_CONFIG)
    async with triton_dataplane(tmp_path) as dataplane:
        batcher = dataplane.resolve("accumulate").scheduler
        clock = batcher.clock = Clock()
        assert await answer(dataplane, "accumulate", 4, 77, start=True) == 4
        clock.ns += 60_000_000 * 1000 + 1
        with pytest.raises(ServerError) as e:
            await answer(dataplane, "accumulate", 1, 77)  # the request itself reaps the sequence first
        assert e.value.message == start_error(77, "accumulate")
        assert len(batcher._free) == 2 * 8


# -- requests outside a sequence, and correlation ids ----------------------------------------------------


async def test_requests_outside_a_started_sequence(tmp_path):
    async with triton_dataplane(sequence_repository(tmp_path)) as dataplane:
        for corrid in (5, "five"):
            with pytest.raises(ServerError) as e:
                await answer(dataplane, "simple_sequence", 1, corrid)
            assert e.value.message == start_error(corrid, "simple_sequence")
        for corrid in (0, ""):
            with pytest.raises(ServerError) as e:
                await answer(dataplane, "simple_sequence", 1, corrid, start=True)
            assert e.value.message == (
                "inference request to model 'simple_sequence' must specify a non-zero or non-empty correlation ID"
            )
        request = InferRequest({"INPUT": np.ones((2, 1), np.int32)}, sequence_id=3, sequence_start=True)
        with pytest.raises(ServerError) as e:
            await dataplane.infer(dataplane.resolve("simple_sequence"), request)
        assert e.value.message == (
            "inference request to model 'simple_sequence' must specify batch-size 1 due to requirements of sequence"
            " batcher"
        )
        # An END ends it: the same id must start again.
        assert await answer(dataplane, "simple_sequence", 4, 5, start=True, end=True) == 5
        with pytest.raises(ServerError):
            await answer(dataplane, "simple_sequence", 4, 5, end=True)


async def test_string_and_integer_correlation_ids_are_distinct_sequences(tmp_path):
    write_accumulate(tmp_path, ACCUMULATE_CONFIG)
    async with triton_dataplane(tmp_path) as dataplane:
        assert await answer(dataplane, "accumulate", 1, 7, start=True) == 1
        assert await answer(dataplane, "accumulate", 100, "7", start=True) == 100
        assert await answer(dataplane, "accumulate", 2, 7) == 3
        assert await answer(dataplane, "accumulate", 200, "7", end=True) == 300
        assert await answer(dataplane, "accumulate", 3, 7, end=True) == 6


async def test_every_control_kind_and_a_string_corrid_reach_the_model(tmp_path):
    """START as fp32 [-1, 2], END as bool, READY as int32 [0, 7], CORRID as the string id."""
    async with triton_dataplane(sequence_repository(tmp_path)) as dataplane:
        model = dataplane.resolve("controls")

        async def send(corrid, start=False, end=False):
            request = InferRequest(
                {"INPUT": np.zeros((1, 1), np.float32)}, sequence_id=corrid, sequence_start=start, sequence_end=end
            )
            outputs = (await dataplane.infer(model, request)).outputs
            return tuple(outputs[n].tolist()[0][0] for n in ("START_OUT", "END_OUT", "READY_OUT", "CORRID_OUT"))

        assert await send("alpha", start=True) == (2.0, False, 7, b"alpha")
        assert await send("alpha") == (-1.0, False, 7, b"alpha")
        assert await send("alpha", end=True) == (-1.0, True, 7, b"alpha")
        with pytest.raises(ServerError) as e:
            await send(12, start=True)
        assert e.value.message == (
            "sequence batching control 'CORRID' data-type is 'UINT64', but model 'controls' expects 'BYTES'"
        )


# -- how a batch is formed (a recording runner: what the model is handed is the point) --------------


def recording_batcher(config_text: str, instances: int = 1):
    config = parse_config(config_text)
    seen: list[dict[str, np.ndarray]] = []

    def run(inputs, output_names):
        seen.append({k: v.copy() for k, v in inputs.items()})
        return {"OUTPUT": inputs["INPUT"] * inputs["READY"] + inputs["START"]}

    policy = SequencePolicy.from_config(config)
    batcher = SequenceBatcher(config.name, [run] * instances, ["OUTPUT"], policy, config.max_batch_size, ModelStats(config.name, 1))
    return batcher, seen


def pending_step(batcher, value, corrid, start=False, end=False):
    return batcher.enqueue({"INPUT": np.array([[value]], np.int32)}, 1, corrid, start, end)


async def test_direct_puts_each_sequence_in_the_row_of_its_slot():
    batcher, seen = recording_batcher(SIMPLE_SEQUENCE_CONFIG.replace("count: 2", "count: 1"))
    try:
        first = [pending_step(batcher, v, c, start=True) for c, v in ((1, 10), (2, 20), (3, 30))]
        answers = [int((await batcher.wait(p))["OUTPUT"][0, 0]) for p in first]
        assert answers == [11, 21, 31]
        # Sequence 2 (slot 1) alone: row 0 is padding with READY false, row 1 is sequence 2.
        p = pending_step(batcher, 5, 2)
        assert int((await batcher.wait(p))["OUTPUT"][0, 0]) == 5
        last = seen[-1]
        assert last["READY"].ravel().tolist() == [0, 1]
        assert last["START"].ravel().tolist() == [0, 0]
        assert last["INPUT"].ravel().tolist() == [0, 5]
    finally:
        for corrid in (1, 2, 3):
            await batcher.wait(pending_step(batcher, 0, corrid, end=True))
        await batcher.close()


async def test_oldest_batches_the_oldest_request_of_each_candidate_sequence():
    config = SIMPLE_SEQUENCE_CONFIG.replace("count: 2", "count: 1").replace(
        "sequence_batching {", "sequence_batching {\n  oldest { max_candidate_sequences: 3 preferred_batch_size: [ 2 ] }"
    )
    batcher, seen = recording_batcher(config)
    try:
        assert batcher.policy.slots == 3 and batcher.policy.preferred == [2]
        pending = [pending_step(batcher, v, c, start=True) for c, v in ((1, 10), (2, 20), (3, 30), (4, 40))]
        assert [s.corrid for s in batcher.backlog] == [4]  # three candidate slots
        answers = [int((await batcher.wait(p))["OUTPUT"][0, 0]) for p in pending[:3]]
        assert answers == [11, 21, 31]
        assert [len(s["INPUT"]) for s in seen] == [2, 1]  # at most the preferred size, oldest first, no padding
        assert seen[0]["INPUT"].ravel().tolist() == [10, 20]
        # Sequence 1 ends; sequence 4 gets its slot.
        await batcher.wait(pending_step(batcher, 0, 1, end=True))
        assert int((await batcher.wait(pending[3]))["OUTPUT"][0, 0]) == 41
    finally:
        for corrid in (2, 3, 4):
            await batcher.wait(pending_step(batcher, 0, corrid, end=True))
        await batcher.close()


async def test_a_cancelled_end_request_still_ends_its_sequence():
    config = SIMPLE_SEQUENCE_CONFIG.replace("count: 2", "count: 1").replace("max_batch_size: 8", "max_batch_size: 1")
    batcher, seen = recording_batcher(config)
    try:
        await batcher.wait(pending_step(batcher, 1, "a", start=True))
        b = pending_step(batcher, 1, "b", start=True, end=True)  # backlogged behind "a"
        waiter = asyncio.ensure_future(batcher.wait(b))
        await asyncio.sleep(0)  # let the waiter start waiting
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await batcher.wait(pending_step(batcher, 1, "a", end=True))
        # "b" never ran, yet its END freed the slot: "c" gets it.
        assert int((await batcher.wait(pending_step(batcher, 3, "c", start=True, end=True)))["OUTPUT"][0, 0]) == 4
        assert len(seen) == 3
    finally:
        await batcher.close()


# -- configs: what loads, and what fails to load with its reason -----------------------------------------


def policy_error(config_text: str) -> str:
    with pytest.raises(ServerError) as e:
        SequencePolicy.from_config(parse_config(config_text))
    return e.value.message


def test_control_configs_are_checked_with_tritons_words():
    base = SIMPLE_SEQUENCE_CONFIG
    assert policy_error(base.replace("int32_false_true: [ 0, 1 ] } ] },", "int32_false_true: [ 0, 1, 2 ] } ] },")) == (
        "sequence batching control 'int32_false_true' must have exactly 2 entries for CONTROL_SEQUENCE_START for"
        " simple_sequence"
    )
    assert policy_error(base.replace("CONTROL_SEQUENCE_READY", "CONTROL_SEQUENCE_START")) == (
        "sequence batching specifies multiple CONTROL_SEQUENCE_START tensors for simple_sequence"
    )
    assert policy_error(base.replace("int32_false_true: [ 0, 1 ] } ] },", "int32_false_true: [ 0, 1 ] fp32_false_true: [ 0, 1 ] } ] },")) == (
        "sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' and"
        " 'bool_false_true' for CONTROL_SEQUENCE_START for simple_sequence"
    )
    assert "must not specify either" in policy_error(
        base.replace("kind: CONTROL_SEQUENCE_READY", "kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64")
    )
    assert policy_error(
        base.replace("kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ]", "kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32")
    ).startswith("unexpected data type for control CONTROL_SEQUENCE_CORRID for simple_sequence")
    assert policy_error(base.replace("sequence_batching {", "sequence_batching {\n oldest { preferred_batch_size: [ 9 ] }")) == (
        "sequence batching preferred batch size must be <= max batch size for simple_sequence"
    )
    assert "minimum slot utilization" in policy_error(
        base.replace("sequence_batching {", "sequence_batching {\n direct { minimum_slot_utilization: 1.5 }")
    )


def test_defaults_follow_triton():
    config = parse_config(SIMPLE_SEQUENCE_CONFIG)
    policy = SequencePolicy.from_config(config)
    assert policy.strategy == "direct" and policy.slots == 8
    assert policy.idle_ns == 1_000_000 * 1000  # max_sequence_idle_microseconds defaults to 1 s
    assert config.sequence_batching.max_sequence_idle_microseconds == 1_000_000  # as Triton's completed config shows
    oldest = parse_config(SIMPLE_SEQUENCE_CONFIG.replace("sequence_batching {", "sequence_batching {\n oldest { }"))
    assert SequencePolicy.from_config(oldest).preferred == [8]
    assert list(oldest.sequence_batching.oldest.preferred_batch_size) == [8]
    assert policy.start is not None and policy.start.true == 1 and policy.start.false == 0
    assert policy.end is None and policy.corrid is None


UNSUPPORTED = {
    "iterative_sequence": (
        "sequence_batching {\n  iterative_sequence: true",
        "sequence_batching 'iterative_sequence' is not supported by triserve",
    ),
    "growable_memory": (
        "sequence_batching {\n  state [ { input_name: \"S\" output_name: \"S_OUT\" data_type: TYPE_INT32 dims: [ 1 ]"
        " use_same_buffer_for_input_output: true use_growable_memory: true } ]",
        "'use_growable_memory' can only work with KIND_GPU model instances right now",
    ),
    "warmup": (
        "model_warmup [ { name: \"w\" batch_size: 1 inputs { key: \"INPUT\" value { data_type: TYPE_INT32 dims: [ 1 ]"
        " zero_data: true } } } ]\nsequence_batching {",
        "model_warmup is not supported with sequence_batching by triserve",
    ),
    "control_not_in_graph": (
        "sequence_batching {\n  control_input [ { name: \"END\" control [ { kind: CONTROL_SEQUENCE_END"
        " int32_false_true: [ 0, 1 ] } ] } ]",
        "sequence control input 'END' is not in the model",
    ),
    "graph_input_not_fed": (
        None,  # READY's control removed below: the graph's READY input would never be fed
        "model input(s) ['READY'] are neither configuration inputs nor sequence batching control or state inputs",
    ),
    "control_type_differs": (
        None,
        "sequence control input 'START' has datatype TYPE_INT32 in the model but TYPE_FP32 in the configuration",
    ),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
async def test_a_sequence_feature_triserve_lacks_fails_the_load_with_its_reason(tmp_path, case):
    """Never READY-then-fail: the model is UNAVAILABLE with the reason; the others serve."""
    edit, reason = UNSUPPORTED[case]
    config = SIMPLE_SEQUENCE_CONFIG.replace('name: "simple_sequence"', 'name: "broken"')
    if case == "graph_input_not_fed":
        config = config.replace(
            ',\n    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }', ""
        )
    elif case == "control_type_differs":
        config = config.replace("CONTROL_SEQUENCE_START int32_false_true", "CONTROL_SEQUENCE_START fp32_false_true")
    else:
        config = config.replace("sequence_batching {", edit, 1)
    simple_sequence_onnx(tmp_path / "broken" / "1" / "model.onnx")
    (tmp_path / "broken" / "config.pbtxt").write_text(config)
    sequence_repository(tmp_path)
    async with triton_dataplane(tmp_path, strict_readiness=False) as dataplane:
        status = dataplane.status("broken")
        assert status.state == "UNAVAILABLE"
        assert reason in status.reason
        assert tmp_path.name not in status.reason  # no server paths in the reason
        assert await answer(dataplane, "simple_sequence", 1, 1, start=True, end=True) == 2


def test_only_onnx_models_take_sequence_batching():
    config = parse_config(SIMPLE_SEQUENCE_CONFIG.replace('platform: "onnxruntime_onnx"', 'platform: "pytorch_libtorch"'))
    with pytest.raises(ServerError) as e:
        SequencePolicy.from_config(config)
    assert "sequence_batching is supported for onnxruntime_onnx models only" in e.value.message


# -- more shapes of the batcher ---------------------------------------------------------------------------


async def test_a_model_without_batching_keeps_state_per_sequence(tmp_path):
    """max_batch_size 0: one slot per instance, tensors without a batch dimension."""
    accumulate_onnx(tmp_path / "accumulate" / "1" / "model.onnx", batching=False)
    config = ACCUMULATE_CONFIG.replace("max_batch_size: 8", "max_batch_size: 0")
    (tmp_path / "accumulate" / "config.pbtxt").write_text(config)
    async with triton_dataplane(tmp_path) as dataplane:
        model = dataplane.resolve("accumulate")
        assert model.scheduler.policy.slots == 1

        async def send(value, corrid, start=False, end=False):
            request = InferRequest(
                {"INPUT": np.array([value], np.int32)}, sequence_id=corrid, sequence_start=start, sequence_end=end
            )
            return int((await dataplane.infer(model, request)).outputs["OUTPUT"][0])

        assert await send(3, 1, start=True) == 3
        assert await send(4, 2, start=True) == 4  # the other instance's slot
        assert await send(5, 1, end=True) == 8
        assert await send(6, 2, end=True) == 10


class SuccessEvents(ModelStats):
    """Statistics that also tell the test when an execution's answers were recorded."""

    def __init__(self) -> None:
        super().__init__("ordered", 1)
        self.successes = asyncio.Event()

    def record_success(self, *args) -> None:
        super().record_success(*args)
        self.successes.set()


@pytest.mark.parametrize("preserve", [True, False])
async def test_oldest_preserve_ordering_answers_in_arrival_order(preserve):
    config = parse_config(
        SIMPLE_SEQUENCE_CONFIG.replace(
            "sequence_batching {",
            f"sequence_batching {{\n  oldest {{ max_candidate_sequences: 1 preserve_ordering: {str(preserve).lower()} }}",
        )
    )
    gate = threading.Event()

    def held(inputs, names):  # instance 0 answers only when the test opens the gate
        gate.wait(timeout=60)
        return {"OUTPUT": inputs["INPUT"] + inputs["START"]}

    def free(inputs, names):
        return {"OUTPUT": inputs["INPUT"] + inputs["START"]}

    stats = SuccessEvents()
    batcher = SequenceBatcher("ordered", [held, free], ["OUTPUT"], SequencePolicy.from_config(config), 8, stats)
    try:
        first = pending_step(batcher, 10, 1, start=True, end=True)  # slot of instance 0
        second = pending_step(batcher, 20, 2, start=True, end=True)  # slot of instance 1
        assert (first.sequence.slot.instance, second.sequence.slot.instance) == (0, 1)
        await stats.successes.wait()  # the second (instance 1) has its answer
        assert not first.future.done()
        assert second.future.done() is (not preserve)
        gate.set()
        assert int((await batcher.wait(first))["OUTPUT"][0, 0]) == 11
        assert int((await batcher.wait(second))["OUTPUT"][0, 0]) == 21
    finally:
        gate.set()
        await batcher.close()


async def test_bad_sequence_parameters_are_400s_in_tritons_words(tmp_path):
    async with triton_dataplane(sequence_repository(tmp_path)) as dataplane:
        transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for parameters, message in (
                ({"sequence_id": -1}, "Unable to parse 'sequence_id'"),
                ({"sequence_id": 2**64}, "Unable to parse 'sequence_id'"),
                ({"sequence_id": 1.5}, "Unable to parse 'sequence_id'"),
                ({"sequence_id": 3, "sequence_start": "yes"}, "Unable to parse 'sequence_start'"),
                ({"sequence_id": 3, "sequence_end": 1}, "Unable to parse 'sequence_end'"),
            ):
                body = {
                    "inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [1]}],
                    "parameters": parameters,
                }
                response = await client.post("/v2/models/simple_sequence/infer", json=body)
                assert response.status_code == 400, parameters
                assert message in response.json()["error"]
            # The control inputs are the server's to fill in, never the client's.
            body = {
                "inputs": [
                    {"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [1]},
                    {"name": "START", "datatype": "INT32", "shape": [1, 1], "data": [1]},
                ],
                "parameters": {"sequence_id": 3, "sequence_start": True},
            }
            response = await client.post("/v2/models/simple_sequence/infer", json=body)
            assert response.status_code == 400
            assert "unexpected inference input 'START'" in response.json()["error"]


async def test_unloading_answers_what_waits_in_the_backlog(tmp_path):
    config = ACCUMULATE_CONFIG.replace("max_batch_size: 8", "max_batch_size: 1").replace("count: 2", "count: 1")
    write_accumulate(tmp_path, config)
    async with triton_dataplane(tmp_path, control_mode="explicit", load_models=["accumulate"]) as dataplane:
        model = dataplane.resolve("accumulate")
        assert await answer(dataplane, "accumulate", 1, "open", start=True) == 1  # never ends
        waiting = model.infer(step(1, "late", start=True))
        await dataplane.unload("accumulate")
        with pytest.raises(ServerError) as e:
            await waiting
        assert e.value.message == "model 'accumulate' is being unloaded"


async def test_a_backlogged_sequence_whose_timeout_expires_is_rejected(tmp_path):
    """Triton's `timeout` for the sequence batcher: how long a sequence may wait for a slot."""
    config = ACCUMULATE_CONFIG.replace("max_batch_size: 8", "max_batch_size: 1").replace("count: 2", "count: 1")
    write_accumulate(tmp_path, config)
    async with triton_dataplane(tmp_path) as dataplane:
        model = dataplane.resolve("accumulate")
        batcher = model.scheduler
        clock = batcher.clock = Clock()
        assert await answer(dataplane, "accumulate", 1, "holder", start=True) == 1
        request = step(2, "patient", start=True)
        request.timeout_us = 500
        first = model.infer(request)
        second = model.infer(step(3, "patient"))  # the same backlogged sequence
        clock.ns += 500 * 1000 - 1
        batcher.reap()
        assert [s.corrid for s in batcher.backlog] == ["patient"]
        clock.ns += 1
        batcher.reap()
        assert not batcher.backlog
        for waiting in (first, second):
            with pytest.raises(ServerError) as e:
                await waiting
            assert e.value.message == "timeout of the corresponding sequence has been expired"
            assert e.value.code.name == "UNAVAILABLE"
        with pytest.raises(ServerError) as e:
            await answer(dataplane, "accumulate", 1, "patient")
        assert e.value.message == start_error("patient", "accumulate")
        assert await answer(dataplane, "accumulate", 1, "holder", end=True) == 2


async def test_the_dyna_models_see_end_and_the_correlation_id(tmp_path):
    """The examples' --dyna models: CORRID (uint64, and a string read as a number) and END reach
    the model, under the oldest strategy; the string one also accumulates on implicit state."""
    values = [11, 7, 5, 3, 2, 0, 1]
    async with triton_dataplane(dyna_sequence_repository(tmp_path)) as dataplane:
        sent = [0, *values]
        got = [await answer(dataplane, "simple_dyna_sequence", v, 1000, i == 0, i == len(sent) - 1) for i, v in enumerate(sent)]
        assert got == [1, *values[:-1], values[-1] + 1000]
        sent = [20, *(-v for v in values)]
        got = [
            await answer(dataplane, "simple_string_dyna_sequence", v, "1002", i == 0, i == len(sent) - 1)
            for i, v in enumerate(sent)
        ]
        running = list(np.cumsum(sent))
        assert got == [*running[:-1], running[-1] + 1002]
