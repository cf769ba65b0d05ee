"""TensorFlow's TensorProto to numpy and back, as tensorflow.make_ndarray / make_tensor_proto
lay it out: `tensor_content` (raw little-endian bytes) or the typed `*_val` fields."""

from __future__ import annotations

import numpy as np

from triserve import datatypes
from triserve.errors import invalid
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


def to_numpy(name: str, proto: tf.TensorProto) -> np.ndarray:
    datatype = v2_datatype(proto.dtype)
    if datatype == "BF16" or not datatypes.is_known(datatype):
        raise invalid(f"input '{name}': dtype {tf.DataType.Name(proto.dtype)} is not supported")
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input '{name}': the tensor shape has unknown rank")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise invalid(f"input '{name}': shape {shape} has a negative dimension")
    count = int(np.prod(shape, dtype=np.int64))
    dtype = datatypes.to_numpy(datatype)
    if proto.tensor_content and datatype != "BYTES":
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise invalid(
                f"input '{name}': tensor_content has {len(proto.tensor_content)} bytes, but shape {shape} of"
                f" {tf.DataType.Name(proto.dtype)} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    values = getattr(proto, _FIELD[datatype])
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=np.object_)
        array[:] = list(values)
    elif datatype == "FP16":
        array = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        array = np.asarray(values, dtype=dtype)
    if array.size == count:
        return array.reshape(shape)
    if array.size > count:
        raise invalid(f"input '{name}': {array.size} values in {_FIELD[datatype]} are more than shape {shape} holds")
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
