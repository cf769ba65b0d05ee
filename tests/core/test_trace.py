"""A traced request's timeline as the core stamps it: request start, queue, the model execution's
four compute timestamps, response and request end, in the order they happened."""

from __future__ import annotations

import numpy as np
import pytest

from tests.inprocess import tiny_repository, triton_dataplane
from triserve.core.trace import Trace
from triserve.core.types import InferRequest

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
