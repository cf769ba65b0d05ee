"""TF SavedModels served over the v2 protocol: signature names, auto-complete, the blog's tfmobilenet."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tritonclient.http as httpclient
from tensorflow.core.protobuf import saved_model_pb2

from tests.conftest import RunningServer, pixels_nchw
from triserve.backends import cpu_count

# Slow tier: server subprocesses over real SavedModels.
pytestmark = pytest.mark.slow

X = np.array([[1, 2, 3, 4]], dtype=np.float32)
Y = np.array([[10, 20, 30, 50]], dtype=np.float32)


class Tiny(tf.Module):
    """Two signatures: serving_default (x, y) -> {sum, product} and double (x) -> {doubled}."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"), tf.TensorSpec([None, 4], tf.float32, name="y")])
    def serve(self, x, y):
        return {"sum": x + y, "product": x * y}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def double(self, x):
        return {"doubled": 2 * x}


def _signature(folder: Path, name: str = "serving_default"):
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((folder / "saved_model.pb").read_bytes())
    return saved.meta_graphs[0].signature_def[name]


def _tensor(name: str, data_type: str = "TYPE_FP32", dims: str = "[ 4 ]") -> str:
    return f'{{ name: "{name}" data_type: {data_type} dims: {dims} }}'


def _model(repo: Path, name: str, saved: Path, config: str | None, *, tf_serving_layout: bool = False) -> Path:
    folder = repo / name
    target = folder / "1" if tf_serving_layout else folder / "1" / "model.savedmodel"
    shutil.copytree(saved, target)
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    return folder


@pytest.fixture(scope="module")
def tiny_savedmodel(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.savedmodel"
    module = Tiny()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve, "double": module.double})
    return path


@pytest.fixture(scope="module")
def tf_server(start_server, tmp_path_factory, tiny_savedmodel) -> RunningServer:
    repo = tmp_path_factory.mktemp("tf") / "models"
    saved = tiny_savedmodel
    product_tensor = _signature(saved).outputs["product"].name  # e.g. StatefulPartitionedCall:0
    _model(repo, "no_config", saved, None)
    _model(repo, "tf_serving_layout", saved, None, tf_serving_layout=True)
    _model(repo, "tensor_names", saved, 'platform: "tensorflow_savedmodel" max_batch_size: 8\n'
           f"input [ {_tensor('serving_default_x:0')}, {_tensor('serving_default_y:0')} ]\n"
           f"output [ {_tensor('sum')}, {_tensor(product_tensor)} ]")
    _model(repo, "other_signature", saved, 'platform: "tensorflow_savedmodel" max_batch_size: 8\n'
           'parameters { key: "signature_name" value { string_value: "double" } }')
    # Broken ones
    _model(repo, "wrong_type", saved, f"max_batch_size: 8 input [ {_tensor('x', 'TYPE_INT32')}, {_tensor('y')} ]")
    _model(repo, "missing_input", saved, f"max_batch_size: 8 input [ {_tensor('x')} ] output [ {_tensor('sum')} ]")
    _model(repo, "unknown_name", saved, f"max_batch_size: 8 input [ {_tensor('x')}, {_tensor('z')} ]")
    _model(repo, "wrong_dims", saved, f"max_batch_size: 8 input [ {_tensor('x', dims='[ 5 ]')}, {_tensor('y')} ]")
    _model(repo, "unknown_signature", saved, 'max_batch_size: 8 parameters { key: "signature_name" value { string_value: "nope" } }')
    corrupt = _model(repo, "corrupt", saved, None)
    (corrupt / "1" / "model.savedmodel" / "saved_model.pb").write_bytes(b"\x0a\xff garbage, not a protobuf")
    return start_server("--model-repository", repo)


@pytest.fixture(scope="module")
def client(tf_server):
    with httpclient.InferenceServerClient(tf_server.url) as c:
        yield c


def infer(client, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wire = []
    for name, array in inputs.items():
        i = httpclient.InferInput(name, list(array.shape), "FP32")
        i.set_data_from_numpy(array)
        wire.append(i)
    result = client.infer(model, wire)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def test_tfmobilenet_answers_what_tensorflow_computes(blog_server, tfmobilenet_signature):
    """The blog's tfmobilenet (tf_keras MobileNetV2 saved by Keras), config as written."""
    x = np.stack([pixels_nchw("chelsea"), pixels_nchw("coffee")]).transpose(0, 2, 3, 1).copy()  # NHWC
    want = tfmobilenet_signature(input_1=tf.constant(x))["predictions"].numpy()
    with httpclient.InferenceServerClient(blog_server.url) as client:
        assert client.is_model_ready("tfmobilenet")
        config = client.get_model_config("tfmobilenet")
        got = infer(client, "tfmobilenet", {"input_1": x})["predictions"]
    assert config["platform"] == "tensorflow_savedmodel" and config["input"][0]["format"] == "FORMAT_NHWC"
    assert got.shape == (2, 1000)
    assert np.abs(got - want).max() < 1e-4
    # Softmax probabilities are small numbers: also hold them to 0.1% of their size, and make sure
    # different photos give different answers, so the comparison means something.
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-7)
    assert np.abs(want[0] - want[1]).max() > 100 * np.abs(got - want).max()


def test_no_config_is_completed_from_the_signature(client):
    config = client.get_model_config("no_config")
    assert config["platform"] == "tensorflow_savedmodel" and config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("x", "TYPE_FP32", [4]), ("y", "TYPE_FP32", [4])]
    assert sorted(t["name"] for t in config["output"]) == ["product", "sum"]
    got = infer(client, "no_config", {"x": X, "y": Y})
    np.testing.assert_array_equal(got["sum"], X + Y)
    np.testing.assert_array_equal(got["product"], X * Y)


def test_tf_serving_layout_without_config(client):
    """A version folder holding saved_model.pb itself, as TF Serving lays models out."""
    np.testing.assert_array_equal(infer(client, "tf_serving_layout", {"x": X, "y": Y})["sum"], X + Y)


def test_config_may_use_tensor_names(client, tiny_savedmodel):
    product_tensor = _signature(tiny_savedmodel).outputs["product"].name
    got = infer(client, "tensor_names", {"serving_default_x:0": X, "serving_default_y:0": Y})
    np.testing.assert_array_equal(got["sum"], X + Y)
    np.testing.assert_array_equal(got[product_tensor], X * Y)


def test_signature_named_in_parameters_and_partial_config(client):
    config = client.get_model_config("other_signature")
    assert config["max_batch_size"] == 8
    assert [t["name"] for t in config["input"]] == ["x"] and [t["name"] for t in config["output"]] == ["doubled"]
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(infer(client, "other_signature", {"x": batch})["doubled"], 2 * batch)


def test_broken_models_are_unavailable_with_a_reason(client):
    why = {row["name"]: row.get("reason", "") for row in client.get_model_repository_index()}
    assert "'x' has datatype TYPE_FP32 in the model but TYPE_INT32" in why["wrong_type"]
    assert "needs input(s) ['y']" in why["missing_input"]
    assert "'z' is not in the signature 'serving_default'; it has ['x', 'y']" in why["unknown_name"]
    assert "dims [5] in the configuration do not match the model's [4]" in why["wrong_dims"]
    assert "no signature 'nope'" in why["unknown_signature"] and "'double', 'serving_default'" in why["unknown_signature"]
    assert "could not read SavedModel" in why["corrupt"]
    for name in ("wrong_type", "missing_input", "unknown_name", "wrong_dims", "unknown_signature", "corrupt"):
        assert not client.is_model_ready(name)
    assert client.is_model_ready("no_config")


def test_thread_pools_are_set_once_for_the_process(tf_server):
    intra = max(1, cpu_count() // 2)  # two instances share the cores; inter-op runs one op per core
    assert f"tensorflow: {intra} intra-op thread(s), {cpu_count()} inter-op thread(s)" in tf_server.log()
