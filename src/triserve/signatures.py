"""A model's named signatures, as TensorFlow SavedModels have them (`serving_default`,
`classify_x_to_y`, ...): plain data that every layer may hold. A backend that has signatures
fills them in, the core checks a request that names one against it, and the TF Serving API
lists them as the model's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


class _SignatureName:
    """The InferRequest.parameters key that names a signature. Not a string, so that no client's
    request parameters (JSON and protobuf keys are strings: a v2 request's `signature_name`) can
    pick one; only the TF Serving API sets it."""

    def __repr__(self) -> str:
        return "SIGNATURE_NAME"


SIGNATURE_NAME = _SignatureName()


@dataclass(frozen=True)
class TensorInfo:
    tensor: str  # the graph tensor the key stands for ("x:0")
    dtype: int  # TensorFlow's DataType number (DT_FLOAT = 1, DT_STRING = 7), as the model declares it
    shape: tuple[int, ...] | None  # -1 for an unknown dimension; None for an unknown rank


@dataclass(frozen=True)
class Signature:
    method_name: str  # PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD, or what the model says
    inputs: Mapping[str, TensorInfo] = field(default_factory=dict)  # key ("x") -> tensor
    outputs: Mapping[str, TensorInfo] = field(default_factory=dict)
