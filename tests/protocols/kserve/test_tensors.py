"""Tensor bytes as the v2 protocol lays them out (binary extension, gRPC raw contents) and
JSON tensor data, checked against tritonclient's own serialization."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from triserve.errors import ServerError
from triserve.protocols.kserve import tensors

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


def error(call, *args) -> str:
    with pytest.raises(ServerError) as e:
        call(*args)
    return e.value.message


def test_check_shape_takes_non_negative_integers():
    assert tensors.check_shape("x", [1, 0, 3]) == [1, 0, 3]
    assert tensors.check_shape("x", []) == []


@pytest.mark.parametrize("shape", [[1, -1], [1.0], [True], "1,2", None, {"dims": [1]}])
def test_check_shape_refuses_anything_else(shape):
    assert "input 'x': shape must be a list of non-negative integers" in error(tensors.check_shape, "x", shape)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_tensors_round_trip_through_little_endian_bytes(datatype):
    array = (np.arange(6) % 2 if datatype == "BOOL" else np.arange(6)).astype(NUMPY[datatype]).reshape(2, 3)
    data = tensors.to_bytes(array)
    assert data == array.astype(np.dtype(NUMPY[datatype]).newbyteorder("<")).tobytes()
    back = tensors.from_bytes("x", datatype, [2, 3], data)
    assert back.shape == (2, 3) and back.dtype == np.dtype(NUMPY[datatype])
    np.testing.assert_array_equal(back, array)


def test_bytes_are_read_and_written_little_endian_whatever_the_array_order():
    big_endian = np.array([1, 256], dtype=">i4")
    assert tensors.to_bytes(big_endian) == b"\x01\x00\x00\x00\x00\x01\x00\x00"
    assert tensors.from_bytes("x", "INT32", [2], b"\x01\x00\x00\x00\x00\x01\x00\x00").tolist() == [1, 256]


def test_from_bytes_reads_a_memoryview_slice_without_copying_the_body():
    body = memoryview(b"header" + np.array([1.5, -2], "<f4").tobytes())
    assert tensors.from_bytes("x", "FP32", [2], body[6:]).tolist() == [1.5, -2]


def test_byte_strings_are_length_prefixed_as_tritonclient_writes_them():
    array = np.array([[b"abc", b""], [b"\x00\xff", "text".encode()]], dtype=np.object_)
    data = tensors.to_bytes(array)
    assert data == serialize_byte_tensor(array).item()
    back = tensors.from_bytes("s", "BYTES", [2, 2], data)
    assert back.dtype == np.object_ and back.tolist() == array.tolist()
    assert deserialize_bytes_tensor(data).tolist() == array.ravel().tolist()


def test_non_bytes_items_are_written_as_their_text():
    assert tensors.to_bytes(np.array(["é", 7], dtype=np.object_)) == struct.pack("<I", 2) + "é".encode() + struct.pack("<I", 1) + b"7"


@pytest.mark.parametrize(
    "data, words",
    [
        (struct.pack("<I", 1) + b"a\x03\x00\x00", "truncated BYTES element length at byte 5"),
        (struct.pack("<I", 10) + b"shortish", "BYTES element of 10 bytes runs past the end"),
        (struct.pack("<I", 4) + b"abcd", "got 1 BYTES elements, but shape [2] needs 2"),
        (struct.pack("<III", 0, 0, 0), "more BYTES elements than the 2 that shape [2] needs"),
        (struct.pack("<I", 0), "4 bytes cannot hold the 2 BYTES elements of shape [2]"),
    ],
    ids=["truncated length", "element past the end", "too few elements", "too many elements", "too short for the shape"],
)
def test_malformed_byte_strings_are_refused(data, words):
    assert words in error(tensors.from_bytes, "s", "BYTES", [2], data)


def test_from_bytes_refuses_a_size_that_does_not_fit_the_shape():
    message = error(tensors.from_bytes, "x", "FP32", [2, 2], bytes(12))
    assert message == "input 'x': unexpected size 12 bytes for datatype FP32 and shape [2, 2], expected 16 bytes"


def test_from_bytes_refuses_unknown_datatypes():
    assert "input 'x': unknown datatype 'FP33'" in error(tensors.from_bytes, "x", "FP33", [1], bytes(4))


def test_json_data_flat_or_nested():
    flat = tensors.from_json("x", "INT32", [2, 2], [1, 2, 3, 4])
    nested = tensors.from_json("x", "INT32", [2, 2], [[1, 2], [3, 4]])
    assert flat.dtype == np.int32 and flat.tolist() == nested.tolist() == [[1, 2], [3, 4]]
    assert tensors.from_json("b", "BOOL", [2], [True, False]).tolist() == [True, False]
    assert tensors.from_json("f", "FP64", [], 2.5).tolist() == 2.5


def test_json_strings_become_bytes():
    array = tensors.from_json("s", "BYTES", [1, 2], [["a", "é"]])
    assert array.dtype == np.object_ and array.tolist() == [[b"a", "é".encode()]]
    assert tensors.from_json("s", "BYTES", [1], "one").tolist() == [b"one"]


@pytest.mark.parametrize(
    "datatype, shape, data, words",
    [
        ("INT32", [3], [1, 2], "unexpected number of elements 2 for shape [3], expected 3"),
        ("INT32", [2], ["a", "b"], "data is not a valid INT32 array"),
        ("INT8", [1], [300], "data is not a valid INT8 array"),
        ("INT32", [2], [[1], [2, 3]], "data is not a valid INT32 array"),
        ("BYTES", [2], ["a", 1], "BYTES data in JSON must be strings, got 1"),
        ("FP16", [1], [1.0], "sending FP16 data via JSON is not supported"),
        ("FP33", [1], [1.0], "unknown datatype 'FP33'"),
    ],
    ids=["count", "text for numbers", "out of range", "ragged", "number for text", "FP16", "unknown datatype"],
)
def test_json_data_that_does_not_fit_is_refused(datatype, shape, data, words):
    assert words in error(tensors.from_json, "x", datatype, shape, data)


def test_json_numbers_of_any_kind_for_floating_point_and_whole_numbers_for_integers():
    assert tensors.from_json("f", "FP32", [3], [1, 2.5, -3]).tolist() == [1, 2.5, -3]
    assert tensors.from_json("i", "INT64", [2], [2.0, -4.0]).tolist() == [2, -4]
    big = [1, 2**64 - 1]  # numpy reads this mixture as floats; the values still arrive exactly
    assert tensors.from_json("u", "UINT64", [2], big).tolist() == big
    assert tensors.from_json("e", "INT32", [0], []).shape == (0,)


@pytest.mark.parametrize(
    "datatype, data, expected",
    [
        ("INT32", [1.5, 2], "integers"),
        ("INT32", ["1", "2"], "integers"),
        ("INT32", [True, False], "integers"),
        ("UINT8", [0.25], "integers"),
        ("FP32", ["1.5"], "numbers"),
        ("FP64", [None], "numbers"),
        ("BOOL", [1, 0], "booleans"),
        ("BOOL", ["false"], "booleans"),
    ],
    ids=["fraction for INT32", "text for INT32", "booleans for INT32", "fraction for UINT8", "text for FP32",
         "null for FP64", "numbers for BOOL", "text for BOOL"],
)
def test_json_values_of_another_kind_are_refused_not_converted(datatype, data, expected):
    """As Triton's: numpy would truncate 1.5 to 1, parse "1" and take any text as true."""
    message = error(tensors.from_json, "x", datatype, [len(data)], data)
    assert f"input 'x': data is not a valid {datatype} array: expected JSON {expected}" in message


def test_to_json():
    assert tensors.to_json(np.array([[1, 2], [3, 4]], np.int64)) == [1, 2, 3, 4]
    assert tensors.to_json(np.array([0.5], np.float32)) == [0.5]
    assert tensors.to_json(np.array([b"a", b"\xff"], np.object_)) == ["a", "\ufffd"]
    assert "sending FP16 data via JSON is not supported" in error(tensors.to_json, np.zeros(1, np.float16))


def _nested(depth: int, value: object) -> object:
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("datatype, value, readable", [("BYTES", "a", 99), ("INT64", 1, 64)])
def test_json_data_nested_100_deep_is_refused_as_in_triton(datatype, value, readable):
    """Numbers nest at most 64 deep (numpy's limit on dimensions), strings 99 (Triton's)."""
    assert tensors.from_json("x", datatype, [1], _nested(readable, value)).size == 1
    assert error(tensors.from_json, "x", datatype, [1], _nested(100, value)) == (
        "JSON nesting depth exceeds maximum allowed limit (100)"
    )


def test_deep_nesting_anywhere_in_bytes_data_is_refused():
    data = ["a", _nested(120, "b")]
    assert "JSON nesting depth exceeds maximum allowed limit (100)" in error(tensors.from_json, "s", "BYTES", [2], data)


def test_more_json_elements_than_the_shape_holds_are_refused_without_reading_them_all():
    assert "unexpected number of elements 1000000 for shape [2], expected 2" in error(
        tensors.from_json, "x", "INT32", [2], [0] * 1_000_000
    )
    assert "more elements in 'data' than the 2 its shape holds" in error(tensors.from_json, "s", "BYTES", [2], ["a"] * 1_000_000)


def test_ragged_byte_strings_count_every_element():
    """As Triton: BYTES JSON data may nest in any way; only the element count must match."""
    assert tensors.from_json("s", "BYTES", [3], [["a"], ["b", "c"]]).tolist() == [b"a", b"b", b"c"]


def test_half_floats_cannot_travel_as_json():
    assert "sending FP16 data via JSON is not supported" in error(tensors.check_json_datatype, "x", "FP16")
    tensors.check_json_datatype("x", "FP32")


def test_byte_strings_are_refused_before_reading_when_the_data_cannot_hold_the_shape():
    """Each element has a 4-byte length: 1,000 bytes cannot hold a million, whatever they say."""
    assert "1000 bytes cannot hold the 1000000 BYTES elements" in error(tensors.from_bytes, "s", "BYTES", [1_000_000], bytes(1000))


def test_a_long_shape_is_cut_short_in_its_error():
    message = error(tensors.check_shape, "x", [1.5] * 1_000_000)
    assert len(message) < 300 and message.endswith("...")


def test_binary_fixed_size_data_is_a_view_of_the_body_and_costs_no_read():
    body = b"header" + np.arange(6, dtype="<f4").tobytes()
    array = tensors.from_bytes("x", "FP32", [2, 3], memoryview(body)[6:])
    assert np.shares_memory(array, np.frombuffer(body, np.uint8))  # no copy of the tensor bytes
    assert tensors.read_cost("FP32", len(body)) == 0  # so no worker thread is needed to "read" it
    assert tensors.read_cost("BYTES", 100) == 100  # BYTES elements are split one by one


@pytest.mark.parametrize("array", [
    np.arange(6, dtype=np.float32).reshape(2, 3), np.array([True, False]), np.zeros((0, 4), np.float16),
    np.arange(4, dtype=">i4"), np.arange(6.0).reshape(2, 3).T, np.array([b"ab", b""], dtype=np.object_),
])
def test_to_buffer_is_to_bytes_and_a_view_where_the_array_is_already_laid_out(array):
    buffer = tensors.to_buffer(array)
    assert bytes(buffer) == tensors.to_bytes(array)
    laid_out = array.dtype != np.object_ and array.flags.c_contiguous and array.dtype.byteorder != ">"
    assert isinstance(buffer, memoryview) == laid_out
    if laid_out and array.size:
        assert np.shares_memory(np.frombuffer(buffer, np.uint8), array)
