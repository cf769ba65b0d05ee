"""The SavedModel backend in-process: TF1 and TF2 SavedModels loaded as TF Serving loads them
(TF Serving's own test models, and a TF2 export with an input of unknown rank and a scalar),
every signature exposed, shapes left to TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tests.inprocess import triton_dataplane
from tests.protocols.tfserving.models import TESTDATA
from triserve.backends import InstanceSettings
from triserve.core.types import InferRequest
from triserve.errors import Code, ServerError
from triserve.signatures import SIGNATURE_NAME, TensorInfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
HALF_PLUS_THREE = TESTDATA / "saved_model_half_plus_three" / "00000123"


@pytest.fixture(scope="module")
def backend():
    from triserve.backends import tensorflow_savedmodel

    return tensorflow_savedmodel


@pytest.fixture(scope="module")
def half_plus_two(backend):
    config = mc.ModelConfig(name="half_plus_two")
    backend.autocomplete(config, HALF_PLUS_TWO)
    model = backend.load(config, HALF_PLUS_TWO, InstanceSettings())
    yield config, model
    model.close()


def test_a_tf1_export_is_completed_from_its_serving_default(half_plus_two):
    config, _ = half_plus_two
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", mc.TYPE_FP32, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("y", mc.TYPE_FP32, [1])]


def test_an_input_of_unknown_rank_is_completed_as_one_dim_of_any_size(backend):
    """half_plus_three's signature gives x no shape: it loads (TF Serving: no shape check)."""
    config = mc.ModelConfig(name="half_plus_three")
    backend.autocomplete(config, HALF_PLUS_THREE)
    assert config.max_batch_size == 0
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [-1])]
    model = backend.load(config, HALF_PLUS_THREE, InstanceSettings())
    try:
        np.testing.assert_array_equal(model.run({"x": np.array([1.0, 2.0, 5.0], np.float32)}, ["y"])["y"], [3.5, 4.0, 5.5])
        assert sorted(model.signatures) == ["serving_default", "tensorflow/serving/regress"]
    finally:
        model.close()


def test_every_signature_is_exposed_with_its_graph_tensors(half_plus_two):
    _, model = half_plus_two
    assert sorted(model.signatures) == ["classify_x_to_y", "regress_x2_to_y3", "regress_x_to_y", "regress_x_to_y2", "serving_default"]
    classify = model.signatures["classify_x_to_y"]
    assert classify.method_name == "tensorflow/serving/classify"
    assert classify.inputs == {"inputs": TensorInfo("tf_example:0", 7, None)}  # DT_STRING, unknown rank
    assert classify.outputs == {"scores": TensorInfo("y:0", 1, (-1, 1))}


def test_a_signature_runs_on_shapes_its_static_shape_does_not_show(half_plus_two):
    """TF Serving feeds x of shape [3] and [2,2] to x:0 declared [-1,1]; so does the backend."""
    _, model = half_plus_two
    y = model.run({"x": np.array([1.0, 2.0, 5.0], np.float32)}, ["y"], "serving_default")["y"]
    np.testing.assert_array_equal(y, [2.5, 3.0, 4.5])
    y = model.run({"x": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)}, ["y"])["y"]  # the config's view
    np.testing.assert_array_equal(y, [[2.5, 3.0], [3.5, 4.0]])
    y3 = model.run({"inputs": np.array([[2.0]], np.float32)}, ["outputs"], "regress_x2_to_y3")["outputs"]
    np.testing.assert_array_equal(y3, [[4.0]])


def test_a_classify_signature_takes_serialized_examples(half_plus_two):
    from tensorflow.core.example import example_pb2

    _, model = half_plus_two
    examples = []
    for x in (2.0, 4.0):
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(x)
        examples.append(example.SerializeToString())
    scores = model.run({"inputs": np.array(examples, dtype=object)}, ["scores"], "classify_x_to_y")["scores"]
    np.testing.assert_array_equal(scores, [[3.0], [4.0]])


def test_values_tensorflow_refuses_are_invalid_arguments_without_paths(half_plus_two):
    _, model = half_plus_two
    with pytest.raises(ServerError) as e:
        model.run({"inputs": np.array([b"not a tf.Example"], dtype=object)}, ["scores"], "classify_x_to_y")
    assert e.value.code == Code.INVALID_ARG and e.value.message.startswith("tensorflow refused the input:")
    with pytest.raises(ServerError) as e:
        model.run({"inputs": np.array([1.0], np.float32)}, ["scores"], "classify_x_to_y")  # a float for a string
    assert e.value.code == Code.INVALID_ARG and str(TESTDATA) not in e.value.message
    with pytest.raises(ServerError) as e:
        model.run({"x": np.ones((1, 1), np.float32)}, ["y"], "nope")
    assert e.value.message == 'Serving signature key "nope" not found.'


def _any_times_scale(path: Path) -> None:
    """TF2: serving_default(values: unknown rank float, scale: scalar float) -> product."""
    import tensorflow as tf

    class Scaler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="values"), tf.TensorSpec([], tf.float32, name="scale")])
        def serve(self, values, scale):
            return {"product": values * scale}

    module = Scaler()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.mark.anyio
async def test_a_tf2_export_with_unknown_rank_and_a_scalar_serves_on_the_v2_view(tmp_path, backend):
    """Auto-completed: values dims [-1], scale dims [1] reshaped to [] for the model; a v2 request
    of any length runs, and one naming the signature runs any shape."""
    _any_times_scale(tmp_path / "scaler" / "1" / "model.savedmodel")
    async with triton_dataplane(tmp_path) as dataplane:
        model = dataplane.model("scaler")
        assert {t.name: (list(t.dims), list(t.reshape.shape) if t.HasField("reshape") else None) for t in model.config.input} == {
            "scale": ([1], []),
            "values": ([-1], None),
        }
        assert model.max_batch_size == 0
        inputs = {"values": np.array([1.0, 2.0, 3.0], np.float32), "scale": np.array([2.0], np.float32)}
        response = await dataplane.infer(model, InferRequest(inputs))
        np.testing.assert_array_equal(response.outputs["product"], [2.0, 4.0, 6.0])
        inputs = {"values": np.ones((2, 2), np.float32), "scale": np.array(3.0, np.float32)}
        response = await dataplane.infer(model, InferRequest(inputs, parameters={SIGNATURE_NAME: "serving_default"}))
        np.testing.assert_array_equal(response.outputs["product"], np.full((2, 2), 3.0))
        with pytest.raises(ServerError) as e:
            dataplane.infer(model, InferRequest({"values": inputs["values"]}, parameters={SIGNATURE_NAME: "serving_default"}))
        assert e.value.message.startswith("input size does not match signature: 1!=2")
        # a v2 client's own `signature_name` parameter is just a parameter: the config's checks apply
        with pytest.raises(ServerError) as e:
            dataplane.infer(model, InferRequest(inputs, parameters={"signature_name": "serving_default"}))
        assert "unexpected shape for input 'values'" in e.value.message
