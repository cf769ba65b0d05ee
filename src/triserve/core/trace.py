"""The timeline of one traced inference request: named steady-clock timestamps (nanoseconds of
time.monotonic_ns, as Triton's steady_clock), stamped by each layer the request passes.

The protocol front end that sampled the request creates the Trace and attaches it to the
InferRequest; the core stamps what only it sees (REQUEST_START, QUEUE_START, COMPUTE_START,
COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, COMPUTE_END, INFER_RESPONSE_COMPLETE, REQUEST_END); the
front end stamps its own receive and send times, then writes the trace where its settings say.
The core knows nothing of where traces go.

A trace that asks for tensors (`tensors`, Triton's TENSORS level) also keeps the tensors as Triton's
core reports them (src/dynamic_batch_scheduler.cc, src/infer_response.cc): the request's inputs as
TENSOR_QUEUE_INPUT when it is queued (not for sequence models: Triton's sequence batcher reports
none), and each output of a response as TENSOR_BACKEND_OUTPUT (after a config `reshape`, before
classification). Only references are kept: rendering them is the front end's, off the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class TensorRecord:
    """One tensor activity: what Triton's TRITONSERVER_InferenceTraceTensorActivityFn receives."""

    activity: str  # TENSOR_QUEUE_INPUT or TENSOR_BACKEND_OUTPUT
    ns: int  # when it happened (orders it among the timestamps)
    name: str
    datatype: str  # the v2 datatype name (Triton's TRITONSERVER_DataTypeString)
    array: Any  # numpy array, the full shape (batch dimension included)
    rendered: bytes | None = None  # the front end's rendering of the record, once made


@dataclass(eq=False)
class Trace:
    id: int
    model_name: str = ""
    model_version: str = ""
    request_id: str = ""
    timestamps: list[tuple[str, int]] = field(default_factory=list)
    sink: Any = None  # the front end's: where the finished trace goes
    tensors: bool = False  # keep the tensor activities too (Triton's TENSORS level)
    tensor_records: list[TensorRecord] = field(default_factory=list)

    def stamp(self, name: str, ns: int | None = None) -> None:
        """Record `name` at `ns` (now when None). Appends are atomic, so the execution thread
        may stamp while the event loop holds the trace."""
        self.timestamps.append((name, time.monotonic_ns() if ns is None else ns))

    def tensor(self, activity: str, name: str, datatype: str, array: Any, ns: int | None = None) -> None:
        """Keep one tensor activity (a reference to `array`, which must not change afterwards)."""
        if self.tensors:
            self.tensor_records.append(
                TensorRecord(activity, time.monotonic_ns() if ns is None else ns, name, datatype, array)
            )

    def compute(self, start_ns: int, input_end_ns: int, output_start_ns: int, end_ns: int) -> None:
        """The four compute timestamps of one model execution."""
        self.timestamps.extend(
            [
                ("COMPUTE_START", start_ns),
                ("COMPUTE_INPUT_END", input_end_ns),
                ("COMPUTE_OUTPUT_START", output_start_ns),
                ("COMPUTE_END", end_ns),
            ]
        )

    def first(self, name: str) -> int | None:
        for stamp, ns in self.timestamps:
            if stamp == name:
                return ns
        return None
