"""gRPC typed tensor contents (`InferTensorContents`) to numpy, field by field as Triton reads them."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from triserve.errors import ServerError
from triserve.protocols.kserve.contents import FIELD, field_of, from_contents

CASES = [
    ("BOOL", "bool_contents", [True, False], np.bool_),
    ("INT8", "int_contents", [-128, 127], np.int8),
    ("INT16", "int_contents", [-3, 4], np.int16),
    ("INT32", "int_contents", [-(2**31), 2**31 - 1], np.int32),
    ("INT64", "int64_contents", [-(2**63), 2**63 - 1], np.int64),
    ("UINT8", "uint_contents", [0, 255], np.uint8),
    ("UINT16", "uint_contents", [1, 65535], np.uint16),
    ("UINT32", "uint_contents", [0, 2**32 - 1], np.uint32),
    ("UINT64", "uint64_contents", [0, 2**64 - 1], np.uint64),
    ("FP32", "fp32_contents", [0.5, -2.0], np.float32),
    ("FP64", "fp64_contents", [1e300, -0.25], np.float64),
]


def contents(field: str, values: list) -> pb.InferTensorContents:
    message = pb.InferTensorContents()
    getattr(message, field).extend(values)
    return message


def error(*args) -> str:
    with pytest.raises(ServerError) as e:
        from_contents(*args)
    return e.value.message


@pytest.mark.parametrize("datatype, field, values, dtype", CASES, ids=[c[0] for c in CASES])
def test_each_datatype_reads_its_field(datatype, field, values, dtype):
    assert FIELD[datatype] == field
    array = from_contents("x", datatype, [2, 1], contents(field, values))
    assert array.dtype == np.dtype(dtype) and array.shape == (2, 1)
    assert array.ravel().tolist() == values


def test_bytes_contents_become_an_object_array_of_bytes():
    array = from_contents("s", "BYTES", [1, 3], contents("bytes_contents", [b"a", b"", b"\x00\xff"]))
    assert array.dtype == np.object_ and array.tolist() == [[b"a", b"", b"\x00\xff"]]


def test_a_scalar_shape_takes_one_value():
    assert from_contents("x", "FP32", [], contents("fp32_contents", [3.0])).tolist() == 3.0


def test_the_element_count_must_match_the_shape():
    message = error("x", "INT32", [2, 2], contents("int_contents", [1, 2, 3]))
    assert message == "input 'x': unexpected number of elements 3 in 'int_contents' for shape [2, 2], expected 4"


def test_values_in_another_field_do_not_count():
    message = error("x", "INT64", [2], contents("int_contents", [1, 2]))
    assert "unexpected number of elements 0 in 'int64_contents'" in message


@pytest.mark.parametrize("datatype, field, value", [("INT8", "int_contents", 300), ("UINT8", "uint_contents", 256), ("INT16", "int_contents", -40000)])
def test_a_value_outside_the_datatype_is_refused(datatype, field, value):
    assert f"input 'x': a value in '{field}' does not fit {datatype}" in error("x", datatype, [1], contents(field, [value]))


def test_fp16_travels_only_in_raw_contents():
    assert "input 'x': FP16 data must be sent in raw_input_contents" in error("x", "FP16", [1], contents("fp32_contents", [1.0]))


def test_unknown_datatypes_are_refused():
    assert "input 'x': unknown datatype 'FP33'" in error("x", "FP33", [1], contents("fp32_contents", [1.0]))


def test_field_of_names_the_contents_field_or_refuses():
    assert field_of("x", "INT16") == "int_contents"
    for datatype, words in (("FP16", "FP16 data must be sent in raw_input_contents"), ("FP33", "unknown datatype 'FP33'")):
        with pytest.raises(ServerError) as e:
            field_of("x", datatype)
        assert words in e.value.message
