"""The three exported EfficientNet-Lite0 variants (ONNX, TorchScript, SavedModel) agree when served,
and the Keras port matches the torch module it was ported from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from tests.conftest import CAT_CLASSES, ESPRESSO, pixels_nchw

# Slow tier: the exported example models and a server of them.
pytestmark = pytest.mark.slow

# model -> (input, output, layout)
VARIANTS = {
    "efficientnet_lite0_onnx": ("input", "output", "NCHW"),
    "efficientnet_lite0_torch": ("input__0", "output__0", "NCHW"),
    "efficientnet_lite0_tf": ("input", "output", "NHWC"),
}


@pytest.fixture(scope="module")
def client(example_server):
    with httpclient.InferenceServerClient(example_server.url) as c:
        yield c


def _served(client, model: str, nchw: np.ndarray) -> np.ndarray:
    name, output, layout = VARIANTS[model]
    x = np.ascontiguousarray(nchw.transpose(0, 2, 3, 1)) if layout == "NHWC" else nchw
    i = httpclient.InferInput(name, list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return client.infer(model, [i]).as_numpy(output)


def test_configs_describe_each_layout(client):
    for model, (name, output, layout) in VARIANTS.items():
        config = client.get_model_config(model)
        assert config["input"][0]["name"] == name and config["output"][0]["name"] == output
        assert config["input"][0]["format"] == f"FORMAT_{layout}"
        assert config["input"][0]["dims"] == ([3, 224, 224] if layout == "NCHW" else [224, 224, 3])
        assert config["max_batch_size"] == 8 and config["output"][0]["label_filename"] == "labels.txt"


@pytest.mark.parametrize("image", ["chelsea", "coffee", "grace_hopper"])
def test_three_variants_agree(client, image):
    answers = {model: _served(client, model, pixels_nchw(image)[None])[0] for model in VARIANTS}
    reference = answers["efficientnet_lite0_onnx"]
    top5 = list(np.argsort(-reference)[:5])
    for model, probabilities in answers.items():
        assert list(np.argsort(-probabilities)[:5]) == top5, model
        assert np.abs(probabilities - reference).max() < 1e-3, model
        # log-probabilities are the logits up to one shared constant: hold those to 1e-3 as well
        assert np.abs(np.log(probabilities[top5]) - np.log(reference[top5])).max() < 1e-3, model
    expected = {"chelsea": CAT_CLASSES, "coffee": {ESPRESSO}, "grace_hopper": {652, 457, 834}}  # military uniform, bow tie, suit
    assert top5[0] in expected[image]


def test_keras_port_matches_torch():
    from triserve.examples import efficientnet_lite0 as enl
    from triserve.examples import efficientnet_lite0_keras as enl_keras

    net = enl.load_pretrained()
    model = enl_keras.from_torch(net)
    x = np.stack([pixels_nchw("grace_hopper"), pixels_nchw("coffee")]).transpose(0, 2, 3, 1).copy()
    with torch.no_grad():
        want = enl.ServingModel(net, layout="NHWC").eval()(torch.from_numpy(x)).numpy()
    got = model(x, training=False).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert [m.name for m in model.inputs] == ["input"] and model.output_names == ["output"]
