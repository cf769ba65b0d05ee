"""gRPC typed tensor contents (`InferTensorContents`) to numpy; raw contents go through tensors.py."""

from __future__ import annotations

import numpy as np

from triserve import datatypes
from triserve.errors import invalid
from triserve.core.model import element_count

# v2 datatype -> the InferTensorContents field that carries it (FP16/BF16 have none: raw only).
FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def field_of(name: str, datatype: str) -> str:
    """The contents field that carries `datatype`; FP16 and unknown datatypes have none."""
    field = FIELD.get(datatype)
    if field is None:
        if datatypes.is_known(datatype):
            raise invalid(f"input '{name}': {datatype} data must be sent in raw_input_contents")
        raise invalid(f"input '{name}': unknown datatype '{datatype}'")
    return field


def from_contents(name: str, datatype: str, shape: list[int], contents) -> np.ndarray:
    field = field_of(name, datatype)
    values = getattr(contents, field)
    count = element_count(name, datatype, shape)
    if len(values) != count:
        raise invalid(
            f"input '{name}': unexpected number of elements {len(values)} in '{field}' for shape {shape},"
            f" expected {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        # fromiter reads the repeated field without a Python list between; out of range raises
        return np.fromiter(values, dtype=datatypes.to_numpy(datatype), count=count).reshape(shape)
    except OverflowError as e:
        raise invalid(f"input '{name}': a value in '{field}' does not fit {datatype}: {e}") from None
