"""A loaded model version checks each request against its config before queuing it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.inprocess import doubler_onnx, tiny_repository, triton_dataplane
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
