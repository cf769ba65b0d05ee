"""TensorFlow's TensorProto to numpy and back, as tensorflow.make_ndarray / make_tensor_proto
lay it out: `tensor_content` (raw little-endian bytes) or the typed `*_val` fields."""

from __future__ import annotations

import math

import numpy as np

from triserve import datatypes
from triserve.core.model import element_count
from triserve.errors import invalid
from triserve.options import DEFAULT_GRPC_MAX_MESSAGE_BYTES
from triserve.protocols.tfserving.servables import tf_dtype, v2_datatype
from triserve.protos import tensorflow_pb2 as tf

# Which typed field carries each v2 datatype (half floats travel as their bit patterns in half_val).
_FIELD = {
    "FP32": "float_val",
    "FP64": "double_val",
    "INT32": "int_val",
    "INT16": "int_val",
    "INT8": "int_val",
    "UINT8": "int_val",
    "UINT16": "int_val",
    "INT64": "int64_val",
    "BOOL": "bool_val",
    "UINT32": "uint32_val",
    "UINT64": "uint64_val",
    "FP16": "half_val",
    "BYTES": "string_val",
}


def header(name: str, proto: tf.TensorProto) -> tuple[str, list[int]]:
    """The v2 datatype and shape of a TensorProto, checked without reading its values."""
    datatype = v2_datatype(proto.dtype)
    if datatype == "BF16" or not datatypes.is_known(datatype):
        raise invalid(f"input '{name}': dtype {tf.DataType.Name(proto.dtype)} is not supported")
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input '{name}': the tensor shape has unknown rank")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise invalid(f"input '{name}': shape {shape} has a negative dimension")
    element_count(name, datatype, shape)
    return datatype, shape


def to_numpy(name: str, proto: tf.TensorProto, max_bytes: int = DEFAULT_GRPC_MAX_MESSAGE_BYTES) -> np.ndarray:
    """The tensor as an array. Fewer values than the shape holds are repeated (TensorFlow's rule),
    but never into a tensor larger than `max_bytes` (the largest message the values could have
    come in whole)."""
    datatype, shape = header(name, proto)
    count = math.prod(shape)
    dtype = datatypes.to_numpy(datatype)
    if proto.tensor_content and datatype != "BYTES":
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise invalid(
                f"input '{name}': tensor_content has {len(proto.tensor_content)} bytes, but shape {shape} of"
                f" {tf.DataType.Name(proto.dtype)} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    values = getattr(proto, _FIELD[datatype])
    if len(values) > count:
        raise invalid(f"input '{name}': {len(values)} values in {_FIELD[datatype]} are more than shape {shape} holds")
    if len(values) < count and count * dtype.itemsize > max_bytes:
        raise invalid(
            f"input '{name}': shape {shape} of {tf.DataType.Name(proto.dtype)} needs {count * dtype.itemsize} bytes,"
            f" more than the largest message ({max_bytes} bytes, --grpc-max-message-bytes)"
        )
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=np.object_)
        array[:] = list(values)
    else:
        try:  # fromiter reads the repeated field without a Python list between; out of range raises
            if datatype == "FP16":  # half floats travel as their bit patterns
                array = np.fromiter(values, dtype=np.uint16, count=len(values)).view(np.float16)
            else:
                array = np.fromiter(values, dtype=dtype, count=len(values))
        except OverflowError:
            raise invalid(f"input '{name}': a value in {_FIELD[datatype]} does not fit {tf.DataType.Name(proto.dtype)}") from None
    if array.size == count:
        return array.reshape(shape)
    # As TensorFlow reads a TensorProto: missing values repeat the last one (zero if there is none).
    filled = np.empty(count, dtype=dtype)
    filled[: array.size] = array
    filled[array.size :] = array[-1] if array.size else (b"" if datatype == "BYTES" else 0)
    return filled.reshape(shape)


def from_numpy(array: np.ndarray) -> tf.TensorProto:
    datatype = datatypes.from_numpy(array.dtype)
    proto = tf.TensorProto(dtype=tf_dtype(datatype))
    proto.tensor_shape.dim.extend(tf.TensorShapeProto.Dim(size=d) for d in array.shape)
    if datatype == "BYTES":
        proto.string_val.extend(b if isinstance(b, bytes) else str(b).encode() for b in array.ravel())
    else:
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto
