"""The three names of every tensor datatype: v2 wire name, config enum name and numpy dtype."""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

# v2 datatype -> numpy dtype. BYTES tensors are numpy object arrays of `bytes`.
_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_FROM_NUMPY = {dtype: name for name, dtype in _NUMPY.items()}

# Size in bytes of one element; BYTES has none.
ELEMENT_SIZE = {name: dtype.itemsize for name, dtype in _NUMPY.items() if name != "BYTES"}


def is_known(datatype: str) -> bool:
    return datatype in _NUMPY


def to_numpy(datatype: str) -> np.dtype:
    return _NUMPY[datatype]


def from_numpy(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    return _FROM_NUMPY[dtype]


def from_config(data_type: str) -> str:
    """`TYPE_FP32` -> `FP32`; Triton's config calls BYTES `TYPE_STRING`."""
    name = data_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def to_config(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else "TYPE_" + datatype


def name_of_config(data_type: int) -> str:
    """A ModelConfig `DataType` enum value (`mc.TYPE_FP32`) -> its v2 name (`FP32`)."""
    return from_config(mc.DataType.Name(data_type))


def numpy_of_config(data_type: int) -> np.dtype:
    """A ModelConfig `DataType` enum value (`mc.TYPE_FP32`) -> its numpy dtype."""
    return to_numpy(name_of_config(data_type))


def dims_fit(shape: list[int], dims: list[int]) -> bool:
    """Same rank and the same size in every dimension, where -1 (in either) matches any size."""
    return len(shape) == len(dims) and all(s == d or s == -1 or d == -1 for s, d in zip(shape, dims))
