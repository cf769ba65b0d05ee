"""Requests and responses as the core sees them: numpy arrays, no wire formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from triserve.core.trace import Trace


@dataclass
class RequestedOutput:
    name: str
    class_count: int = 0  # > 0: answer with the top classes instead of the tensor


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None = None  # None: every output, as tensors
    id: str = ""
    priority: int = 0  # 0: the model's default level; 1 is the highest
    timeout_us: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # Sequence batching: the correlation id (0 or "": not in a sequence) and the start/end flags.
    sequence_id: int | str = 0
    sequence_start: bool = False
    sequence_end: bool = False
    trace: Trace | None = None  # set by a front end that samples this request for tracing


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]  # in the order asked for; classification outputs are BYTES
