"""The three names of every tensor datatype: v2 wire name, config enum name and numpy dtype."""

from __future__ import annotations

import numpy as np

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
