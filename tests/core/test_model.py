"""A loaded model version checks each request against its config before queuing it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.inprocess import doubler_onnx, tiny_repository, triton_dataplane
from triserve.core.model import element_count
from triserve.core.types import InferRequest, RequestedOutput
from triserve.errors import Code, ServerError

pytestmark = pytest.mark.anyio

# The doubler graph (FP32 x [batch, 3] -> y = 2x) under other configs.
RESHAPED = """
name: "reshaped"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, 3 ] reshape: { shape: [ 3 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3, 1 ] reshape: { shape: [ 3 ] } } ]
"""
UNBATCHED = """
name: "unbatched"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
"""


def repository(root: Path) -> Path:
    tiny_repository(root)
    for name, config in (("reshaped", RESHAPED), ("unbatched", UNBATCHED)):
        doubler_onnx(root / name / "1" / "model.onnx")
        (root / name / "config.pbtxt").write_text(config)
    return root


def ints(*shape: int) -> np.ndarray:
    return np.ones(shape, np.int32)


def refused(model, request: InferRequest) -> str:
    """The message of the request's refusal, which comes before anything is queued."""
    with pytest.raises(ServerError) as e:
        model.infer(request)
    assert e.value.code == Code.INVALID_ARG
    assert model.stats.pending == 0
    return e.value.message


@pytest.fixture
async def dataplane(tmp_path):
    async with triton_dataplane(repository(tmp_path)) as dataplane:
        yield dataplane


async def test_a_missing_input_is_named(dataplane):
    message = refused(dataplane.resolve("simple"), InferRequest({"INPUT0": ints(1, 16)}, id="7"))
    assert message.startswith("[request id: 7] expected 2 inputs but got 1 inputs for model 'simple'")
    assert "missing required input(s) ['INPUT1']" in message


async def test_an_unknown_input_is_named(dataplane):
    request = InferRequest({"INPUT0": ints(1, 16), "INPUT1": ints(1, 16), "EXTRA": ints(1, 16)})
    assert "unexpected inference input 'EXTRA' for model 'simple'" in refused(dataplane.resolve("simple"), request)


async def test_a_wrong_datatype_is_refused(dataplane):
    request = InferRequest({"INPUT0": ints(1, 16).astype(np.float32), "INPUT1": ints(1, 16)})
    message = refused(dataplane.resolve("simple"), request)
    assert "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'" in message


async def test_a_wrong_shape_is_refused(dataplane):
    message = refused(dataplane.resolve("simple"), InferRequest({"INPUT0": ints(1, 15), "INPUT1": ints(1, 15)}))
    assert "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [1,15]" in message
    message = refused(dataplane.resolve("simple"), InferRequest({"INPUT0": ints(16), "INPUT1": ints(16)}))
    assert "Expected [-1,16], got [16]" in message  # a batching model needs the batch dimension


async def test_inputs_must_agree_on_the_batch_size(dataplane):
    message = refused(dataplane.resolve("simple"), InferRequest({"INPUT0": ints(2, 16), "INPUT1": ints(3, 16)}))
    assert "input 'INPUT1' batch size 3 does not match the batch size 2" in message


async def test_a_batch_too_large_or_empty_is_refused(dataplane):
    simple = dataplane.resolve("simple")
    nine, none = ({"INPUT0": ints(n, 16), "INPUT1": ints(n, 16)} for n in (9, 0))
    assert "batch-size must be <= 8 for 'simple', got 9" in refused(simple, InferRequest(nine))
    assert "batch-size must be at least 1" in refused(simple, InferRequest(none))


async def test_requested_outputs_must_exist_and_class_counts_be_positive(dataplane):
    inputs = {"INPUT0": ints(1, 16), "INPUT1": ints(1, 16)}
    simple = dataplane.resolve("simple")
    message = refused(simple, InferRequest(inputs, [RequestedOutput("NOPE")]))
    assert "unexpected inference output 'NOPE' for model 'simple'" in message
    assert "must be positive" in refused(simple, InferRequest(inputs, [RequestedOutput("OUTPUT0", class_count=-1)]))


async def test_only_the_requested_outputs_are_answered(dataplane):
    response = await dataplane.resolve("simple").infer(
        InferRequest({"INPUT0": ints(1, 16), "INPUT1": ints(1, 16)}, [RequestedOutput("OUTPUT1")])
    )
    assert list(response.outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(response.outputs["OUTPUT1"], np.zeros((1, 16)))


async def test_a_classification_output_gives_the_top_classes_with_labels(dataplane):
    scores = np.array([[0.1, 0.9, 0.3, 0.0, 0.5]], np.float32)
    response = await dataplane.resolve("scores").infer(
        InferRequest({"INPUT": scores}, [RequestedOutput("OUTPUT", class_count=2)])
    )
    assert response.outputs["OUTPUT"].tolist() == [[b"0.900000:1:one", b"0.500000:4:four"]]


async def test_reshape_gives_the_framework_its_shape_and_the_client_the_configured_one(dataplane):
    reshaped = dataplane.resolve("reshaped")
    x = np.array([[[1, 2, 3]], [[4, 5, 6]]], np.float32)  # [batch, 1, 3] as the config's dims say
    response = await reshaped.infer(InferRequest({"x": x}))
    np.testing.assert_array_equal(response.outputs["y"], (2 * x).reshape(2, 3, 1))
    assert "Expected [-1,1,3], got [2,3]" in refused(reshaped, InferRequest({"x": x.reshape(2, 3)}))


async def test_a_model_without_batching_takes_exactly_its_dims(dataplane):
    unbatched = dataplane.resolve("unbatched")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    response = await unbatched.infer(InferRequest({"x": x}))
    np.testing.assert_array_equal(response.outputs["y"], 2 * x)
    assert "Expected [2,3], got [1,2,3]" in refused(unbatched, InferRequest({"x": x[None]}))


async def test_duplicate_requested_outputs_are_refused_as_in_triton(dataplane):
    inputs = {"INPUT0": ints(1, 16), "INPUT1": ints(1, 16)}
    request = InferRequest(inputs, [RequestedOutput("OUTPUT1"), RequestedOutput("OUTPUT1")], id="9")
    assert refused(dataplane.resolve("simple"), request) == "[request id: 9] output 'OUTPUT1' already exists in request"


async def test_inputs_are_checked_by_datatype_and_shape_before_any_array_exists(dataplane):
    simple = dataplane.resolve("simple")
    assert simple.check_inputs({"INPUT0": ("INT32", [3, 16]), "INPUT1": ("INT32", [3, 16])}) == 3
    with pytest.raises(ServerError) as e:
        simple.check_inputs({"INPUT0": ("BYTES", [1, 16]), "INPUT1": ("INT32", [1, 16])}, "7")
    assert e.value.message == "[request id: 7] inference input 'INPUT0' data-type is 'BYTES', but model 'simple' expects 'INT32'"
    with pytest.raises(ServerError) as e:
        simple.check_inputs({"INPUT0": ("FP33", [1, 16]), "INPUT1": ("INT32", [1, 16])})
    assert "input 'INPUT0': unknown datatype 'FP33'" in e.value.message


async def test_a_batch_the_data_plane_splits_may_exceed_max_batch_size(dataplane):
    simple = dataplane.resolve("simple")
    big = {"INPUT0": ("INT32", [20, 16]), "INPUT1": ("INT32", [20, 16])}
    assert simple.check_inputs(big, split=True) == 20
    with pytest.raises(ServerError):
        simple.check_inputs(big)


async def test_arrays_without_a_v2_datatype_are_refused_by_name(dataplane):
    request = InferRequest({"INPUT0": np.zeros((1, 16), np.complex64), "INPUT1": ints(1, 16)})
    assert "unknown datatype 'complex64'" in refused(dataplane.resolve("simple"), request)


def test_element_count():
    assert element_count("x", "FP32", [2, 3, 4]) == 24
    assert element_count("x", "FP32", [0, 5]) == 0
    assert element_count("x", "FP32", []) == 1  # a scalar


@pytest.mark.parametrize(
    "shape, datatype, words",
    [
        ([0, 2**63], "FP32", "shape [0,9223372036854775808] causes total element count to exceed maximum size of 9223372036854775807"),
        ([0, 2**62, 2**62], "INT8", "causes total element count to exceed maximum size of 9223372036854775807"),
        ([2**62] * 100_000, "INT8", "causes total element count to exceed"),  # stops at the second dimension
        ([2, 2**61], "FP32", "byte size overflow for input 'x': element count (4611686018427387904) * data type size (4)"),
        ([2**61, 2], "BYTES", "byte size overflow for input 'x'"),  # object arrays hold 8-byte pointers
        ([3, -1], "FP32", "invalid shape for input 'x': shape [3,-1] contains one or more invalid dimensions"),
    ],
    ids=["beyond int64", "zero beside huge", "long shape", "byte size", "BYTES byte size", "negative"],
)
def test_shapes_no_array_can_hold_are_refused_with_tritons_words(shape, datatype, words):
    with pytest.raises(ServerError) as e:
        element_count("x", datatype, shape)
    assert e.value.code == Code.INVALID_ARG
    assert words in e.value.message
