"""A traced request's timeline as the core stamps it: request start, queue, the model execution's
four compute timestamps, response and request end, in the order they happened; and, for a trace
asking for tensors (Triton's TENSORS level), the tensors where Triton's core reports them."""

from __future__ import annotations

import numpy as np
import pytest

from tests.inprocess import sequence_repository, tiny_repository, triton_dataplane
from triserve.core.trace import Trace
from triserve.core.types import InferRequest, RequestedOutput

A = np.arange(16, dtype=np.int32).reshape(1, 16)
CORE_ORDER = [
    "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END",
    "INFER_RESPONSE_COMPLETE", "REQUEST_END",
]


def test_stamps_keep_their_names_and_times():
    trace = Trace(7)
    trace.stamp("HTTP_RECV_START", 10)
    trace.compute(20, 21, 22, 23)
    trace.stamp("REQUEST_END")
    assert [name for name, _ in trace.timestamps] == [
        "HTTP_RECV_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END"
    ]
    assert trace.first("COMPUTE_INPUT_END") == 21 and trace.first("QUEUE_START") is None
    assert trace.timestamps[-1][1] > 23  # now, on the same monotonic clock


@pytest.mark.anyio
async def test_the_core_stamps_a_traced_request_and_leaves_others_alone(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        model = dataplane.model("simple", None)
        traced = Trace(1)
        await dataplane.infer(model, InferRequest({"INPUT0": A, "INPUT1": A}, id="r1", trace=traced))
        plain = InferRequest({"INPUT0": A, "INPUT1": A})
        await dataplane.infer(model, plain)
    assert [name for name, _ in traced.timestamps] == CORE_ORDER
    times = [ns for _, ns in traced.timestamps]
    assert times == sorted(times)
    assert (traced.model_name, traced.model_version, traced.request_id) == ("simple", "1", "r1")
    assert plain.trace is None


def test_tensor_records_are_kept_only_for_a_trace_that_asks_for_them():
    plain, tensors = Trace(1), Trace(2, tensors=True)
    for traced in (plain, tensors):
        traced.tensor("TENSOR_QUEUE_INPUT", "INPUT0", "INT32", A, 5)
    assert plain.tensor_records == []
    (record,) = tensors.tensor_records
    assert (record.activity, record.name, record.datatype, record.ns, record.rendered) == (
        "TENSOR_QUEUE_INPUT", "INPUT0", "INT32", 5, None)
    assert record.array is A  # a reference: rendering is the front end's


@pytest.mark.anyio
async def test_the_core_keeps_the_queued_inputs_and_the_response_outputs_of_a_tensors_trace(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        traced = Trace(1, tensors=True)
        b = np.ones((1, 16), np.int32)
        await dataplane.infer(dataplane.model("simple", None), InferRequest({"INPUT0": A, "INPUT1": b}, trace=traced))
        scores = Trace(2, tensors=True)
        x = np.array([[0.1, 0.9, 0.3, 0.0, 0.2]], np.float32)
        request = InferRequest({"INPUT": x}, outputs=[RequestedOutput("OUTPUT", class_count=2)], trace=scores)
        await dataplane.infer(dataplane.model("scores", None), request)
    records = [(r.activity, r.name, r.datatype) for r in traced.tensor_records]
    assert records == [
        ("TENSOR_QUEUE_INPUT", "INPUT0", "INT32"), ("TENSOR_QUEUE_INPUT", "INPUT1", "INT32"),
        ("TENSOR_BACKEND_OUTPUT", "OUTPUT0", "INT32"), ("TENSOR_BACKEND_OUTPUT", "OUTPUT1", "INT32"),
    ]  # Triton's core never reports TENSOR_BACKEND_INPUT
    arrays = [r.array for r in traced.tensor_records]
    assert arrays[0] is A and arrays[1] is b
    np.testing.assert_array_equal(arrays[2], A + 1)
    np.testing.assert_array_equal(arrays[3], A - 1)
    queued, computed, answered = traced.first("QUEUE_START"), traced.first("COMPUTE_END"), traced.first("INFER_RESPONSE_COMPLETE")
    assert [r.ns for r in traced.tensor_records[:2]] == [queued, queued]
    assert all(computed <= r.ns <= answered for r in traced.tensor_records[2:])
    # the output as the model made it (Triton classifies in its front end, after the trace)
    (_, output) = scores.tensor_records
    assert (output.name, output.datatype) == ("OUTPUT", "FP32")
    np.testing.assert_array_equal(output.array, x)


@pytest.mark.anyio
async def test_a_sequence_model_reports_no_queued_inputs_as_tritons_sequence_batcher(tmp_path):
    async with triton_dataplane(sequence_repository(tmp_path)) as dataplane:
        traced = Trace(1, tensors=True)
        request = InferRequest({"INPUT": np.array([[3]], np.int32)}, sequence_id=7, sequence_start=True,
                               sequence_end=True, trace=traced)
        await dataplane.infer(dataplane.model("simple_sequence", None), request)
    assert [(r.activity, r.name) for r in traced.tensor_records] == [("TENSOR_BACKEND_OUTPUT", "OUTPUT")]
    assert traced.first("QUEUE_START") is not None
