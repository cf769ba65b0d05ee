"""The datatype names: config enum values to numpy dtypes, and shapes against config dims."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes


@pytest.mark.parametrize(
    ("data_type", "dtype"),
    [
        (mc.TYPE_BOOL, np.bool_),
        (mc.TYPE_UINT8, np.uint8),
        (mc.TYPE_INT32, np.int32),
        (mc.TYPE_INT64, np.int64),
        (mc.TYPE_FP16, np.float16),
        (mc.TYPE_FP32, np.float32),
        (mc.TYPE_FP64, np.float64),
    ],
)
def test_config_enum_gives_the_numpy_dtype(data_type, dtype):
    assert datatypes.numpy_of_config(data_type) == np.dtype(dtype)


def test_config_strings_are_numpy_object_arrays_named_bytes():
    assert datatypes.name_of_config(mc.TYPE_STRING) == "BYTES"
    assert datatypes.numpy_of_config(mc.TYPE_STRING) == np.dtype(np.object_)


def test_every_config_enum_but_invalid_and_bf16_has_a_numpy_dtype():
    names = [name for name in mc.DataType.keys() if name not in ("TYPE_INVALID", "TYPE_BF16")]
    for name in names:
        dtype = datatypes.numpy_of_config(mc.DataType.Value(name))
        assert datatypes.to_config(datatypes.from_numpy(dtype)) == name


def test_dims_fit_when_every_size_matches():
    assert datatypes.dims_fit([3, 224, 224], [3, 224, 224])
    assert not datatypes.dims_fit([3, 224, 225], [3, 224, 224])


def test_minus_one_matches_any_size_on_either_side():
    assert datatypes.dims_fit([7, 16], [-1, 16])
    assert datatypes.dims_fit([-1, 16], [7, 16])
    assert datatypes.dims_fit([-1], [-1])
    assert not datatypes.dims_fit([-1, 15], [7, 16])


def test_dims_of_another_rank_never_fit():
    assert not datatypes.dims_fit([16], [-1, 16])
    assert not datatypes.dims_fit([1, 16], [16])
    assert datatypes.dims_fit([], [])
