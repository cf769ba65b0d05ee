"""TensorProto <-> numpy as TensorFlow lays tensors out: `tensor_content` or the typed `*_val`
fields in, `tensor_content` (`string_val` for strings) out; checked against TensorFlow's own
make_tensor_proto / make_ndarray."""

from __future__ import annotations

import os

import numpy as np
import pytest

from triserve.errors import Code, ServerError
from triserve.protocols.tfserving.tensors import from_numpy, header, to_numpy
from triserve.protos import tensorflow_pb2 as tf

NUMERIC = [
    np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
    np.float16, np.float32, np.float64,
]  # fmt: skip
DT = {
    np.bool_: tf.DT_BOOL, np.uint8: tf.DT_UINT8, np.uint16: tf.DT_UINT16, np.uint32: tf.DT_UINT32,
    np.uint64: tf.DT_UINT64, np.int8: tf.DT_INT8, np.int16: tf.DT_INT16, np.int32: tf.DT_INT32,
    np.int64: tf.DT_INT64, np.float16: tf.DT_HALF, np.float32: tf.DT_FLOAT, np.float64: tf.DT_DOUBLE,
}  # fmt: skip


def sample(dtype) -> np.ndarray:
    """A [2, 3] array with values near each end of the dtype's range."""
    if dtype is np.bool_:
        return np.array([[True, False, True], [False, False, True]])
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    return np.array([[info.min, 0, 1], [2, info.max, info.max // 2 if np.issubdtype(dtype, np.integer) else -0.5]], dtype)


def strings() -> np.ndarray:
    array = np.empty((2, 2), np.object_)
    array[:] = [[b"", b"\xff\x00"], ["héllo".encode(), b"x" * 300]]
    return array


def proto(dtype: int, shape: list[int], **fields) -> tf.TensorProto:
    tensor = tf.TensorProto(dtype=dtype, **fields)
    tensor.tensor_shape.dim.extend(tf.TensorShapeProto.Dim(size=d) for d in shape)
    return tensor


def rejected(tensor: tf.TensorProto) -> str:
    with pytest.raises(ServerError) as e:
        to_numpy("x", tensor)
    assert e.value.code == Code.INVALID_ARG
    return e.value.message


@pytest.fixture(scope="module")
def tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


# -- round trips --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", NUMERIC, ids=lambda d: d.__name__)
def test_numeric_arrays_round_trip_through_tensor_content(dtype):
    array = sample(dtype)
    tensor = from_numpy(array)
    assert tensor.dtype == DT[dtype]
    assert [d.size for d in tensor.tensor_shape.dim] == [2, 3]
    assert tensor.tensor_content == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    back = to_numpy("x", tensor)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_strings_round_trip_through_string_val():
    tensor = from_numpy(strings())
    assert tensor.dtype == tf.DT_STRING and not tensor.tensor_content
    assert list(tensor.string_val) == strings().ravel().tolist()
    back = to_numpy("x", tensor)
    assert back.dtype == np.object_ and back.shape == (2, 2)
    assert back.tolist() == strings().tolist()


def test_text_outputs_are_written_as_utf8():
    tensor = from_numpy(np.array(["héllo", "x"]))
    assert tensor.dtype == tf.DT_STRING and list(tensor.string_val) == ["héllo".encode(), b"x"]


def test_scalars_and_empty_tensors():
    scalar = from_numpy(np.array(2.5, np.float32))
    assert list(scalar.tensor_shape.dim) == []
    assert to_numpy("x", scalar).shape == () and to_numpy("x", scalar) == 2.5
    assert to_numpy("x", proto(tf.DT_FLOAT, [], float_val=[1.5])) == np.float32(1.5)
    empty = to_numpy("x", from_numpy(np.zeros((0, 3), np.int64)))
    assert empty.shape == (0, 3) and empty.dtype == np.int64


# -- the typed fields ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "tensor,expected",
    [
        (proto(tf.DT_FLOAT, [2], float_val=[1.5, -2.0]), np.array([1.5, -2.0], np.float32)),
        (proto(tf.DT_DOUBLE, [1, 2], double_val=[1e300, -0.5]), np.array([[1e300, -0.5]])),
        (proto(tf.DT_INT32, [2], int_val=[-(2**31), 2**31 - 1]), np.array([-(2**31), 2**31 - 1], np.int32)),
        (proto(tf.DT_INT16, [2], int_val=[-5, 300]), np.array([-5, 300], np.int16)),
        (proto(tf.DT_INT8, [2], int_val=[-128, 127]), np.array([-128, 127], np.int8)),
        (proto(tf.DT_UINT8, [2], int_val=[0, 255]), np.array([0, 255], np.uint8)),
        (proto(tf.DT_UINT16, [2], int_val=[0, 65535]), np.array([0, 65535], np.uint16)),
        (proto(tf.DT_INT64, [2], int64_val=[-(2**63), 2**63 - 1]), np.array([-(2**63), 2**63 - 1], np.int64)),
        (proto(tf.DT_UINT32, [1], uint32_val=[2**32 - 1]), np.array([2**32 - 1], np.uint32)),
        (proto(tf.DT_UINT64, [1], uint64_val=[2**64 - 1]), np.array([2**64 - 1], np.uint64)),
        (proto(tf.DT_BOOL, [3], bool_val=[True, False, True]), np.array([True, False, True])),
        # half floats travel as their bit patterns: 0x3C00 is 1.0, 0xC000 is -2.0
        (proto(tf.DT_HALF, [2], half_val=[0x3C00, 0xC000]), np.array([1.0, -2.0], np.float16)),
    ],
    ids=lambda v: tf.DataType.Name(v.dtype) if isinstance(v, tf.TensorProto) else "",
)
def test_typed_fields_are_read_for_each_dtype(tensor, expected):
    array = to_numpy("x", tensor)
    assert array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)


def test_typed_strings_are_bytes():
    array = to_numpy("x", proto(tf.DT_STRING, [2, 1], string_val=[b"a", b"\xff"]))
    assert array.dtype == np.object_ and array.tolist() == [[b"a"], [b"\xff"]]


def test_tensor_content_wins_over_typed_fields():
    tensor = proto(tf.DT_INT32, [2], int_val=[7, 7], tensor_content=np.array([1, 2], "<i4").tobytes())
    np.testing.assert_array_equal(to_numpy("x", tensor), [1, 2])


def test_missing_typed_values_repeat_the_last_one_as_tensorflow_reads_them():
    np.testing.assert_array_equal(to_numpy("x", proto(tf.DT_FLOAT, [2, 2], float_val=[3.0])), [[3.0, 3.0], [3.0, 3.0]])
    np.testing.assert_array_equal(to_numpy("x", proto(tf.DT_INT32, [4], int_val=[1, 2])), [1, 2, 2, 2])
    np.testing.assert_array_equal(to_numpy("x", proto(tf.DT_INT64, [3])), [0, 0, 0])
    assert to_numpy("x", proto(tf.DT_STRING, [2])).tolist() == [b"", b""]


# -- errors -------------------------------------------------------------------------------
def test_tensor_content_must_fill_the_shape():
    tensor = proto(tf.DT_FLOAT, [2, 3], tensor_content=b"\x00" * 12)
    assert rejected(tensor) == "input 'x': tensor_content has 12 bytes, but shape [2, 3] of DT_FLOAT needs 24"


def test_more_typed_values_than_the_shape_holds():
    assert rejected(proto(tf.DT_FLOAT, [2], float_val=[1, 2, 3])) == (
        "input 'x': 3 values in float_val are more than shape [2] holds"
    )


def test_shapes_must_be_known():
    assert rejected(proto(tf.DT_FLOAT, [2, -1])) == "input 'x': shape [2, -1] has a negative dimension"
    unknown = proto(tf.DT_FLOAT, [])
    unknown.tensor_shape.unknown_rank = True
    assert rejected(unknown) == "input 'x': the tensor shape has unknown rank"


@pytest.mark.parametrize(
    "dtype,message",
    [
        (tf.DT_BFLOAT16, "input 'x': dtype DT_BFLOAT16 is not supported"),
        (tf.DT_COMPLEX64, "tensor dtype DT_COMPLEX64 is not supported"),
        (tf.DT_RESOURCE, "tensor dtype DT_RESOURCE is not supported"),
        (tf.DT_INVALID, "tensor dtype DT_INVALID is not supported"),
        (99, "tensor dtype 99 is not supported"),
    ],
)
def test_dtypes_triserve_cannot_hold_are_refused(dtype, message):
    assert rejected(proto(dtype, [1], half_val=[0x3F80])) == message


# -- against TensorFlow -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [*NUMERIC, np.object_], ids=lambda d: d.__name__)
def test_tensorflow_reads_what_we_write_and_we_read_what_it_writes(tensorflow, dtype):
    from tensorflow.core.framework import tensor_pb2

    array = strings() if dtype is np.object_ else sample(dtype)
    theirs = tensor_pb2.TensorProto.FromString(from_numpy(array).SerializeToString())
    np.testing.assert_array_equal(tensorflow.make_ndarray(theirs), array)
    ours = tf.TensorProto.FromString(tensorflow.make_tensor_proto(array).SerializeToString())
    np.testing.assert_array_equal(to_numpy("x", ours), array)


def test_tensorflow_fills_typed_fields_as_we_do(tensorflow):
    from tensorflow.core.framework import tensor_pb2

    for tensor in (
        proto(tf.DT_FLOAT, [2, 2], float_val=[3.0]),
        proto(tf.DT_INT32, [4], int_val=[1, 2]),
        proto(tf.DT_HALF, [3], half_val=[0x3C00, 0xC000]),
        proto(tf.DT_UINT16, [2], int_val=[65535]),
        proto(tf.DT_BOOL, [2], bool_val=[True]),
    ):
        theirs = tensorflow.make_ndarray(tensor_pb2.TensorProto.FromString(tensor.SerializeToString()))
        ours = to_numpy("x", tensor)
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


def shaped(dtype: int, *dims: int, **values) -> tf.TensorProto:
    proto = tf.TensorProto(dtype=dtype, **values)
    proto.tensor_shape.dim.extend(tf.TensorShapeProto.Dim(size=d) for d in dims)
    return proto


def test_header_gives_datatype_and_shape_without_reading_values():
    assert header("x", shaped(tf.DT_STRING, 2, 3)) == ("BYTES", [2, 3])
    assert header("x", shaped(tf.DT_FLOAT, 4, tensor_content=b"garbage")) == ("FP32", [4])


def test_shapes_no_array_can_hold_are_refused_with_tritons_words():
    with pytest.raises(ServerError) as e:
        header("x", shaped(tf.DT_FLOAT, 0, 2**62, 2**62))
    assert "causes total element count to exceed maximum size of 9223372036854775807" in e.value.message


def test_a_few_values_are_not_repeated_into_a_tensor_larger_than_a_message():
    proto = shaped(tf.DT_INT32, 2**20, 16, int_val=[1])
    assert "needs 67108864 bytes, more than the largest message (1000 bytes" in _refused_with_limit(proto, 1000)
    assert to_numpy("x", shaped(tf.DT_INT32, 250, int_val=[7]), max_bytes=1000).tolist() == [7] * 250


def _refused_with_limit(proto: tf.TensorProto, limit: int) -> str:
    with pytest.raises(ServerError) as e:
        to_numpy("x", proto, max_bytes=limit)
    return e.value.message


@pytest.mark.parametrize("dtype, field, value", [(tf.DT_UINT8, "int_val", 300), (tf.DT_INT8, "int_val", -200), (tf.DT_HALF, "half_val", -1)])
def test_typed_values_outside_the_dtype_are_refused(dtype, field, value):
    message = rejected(shaped(dtype, 1, **{field: [value]}))
    assert f"input 'x': a value in {field} does not fit" in message
