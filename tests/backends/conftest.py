"""The blog's two repositories, `tfmobilenet` and `torchmobilenet`, built with the configs as written.

Random weights with BatchNorm statistics taken from one batch of random pixels, so the outputs
depend on the image (untrained BatchNorm makes MobileNetV2 answer the same for every input).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RunningServer

LABELS = Path(__file__).resolve().parents[2] / "src" / "triserve" / "examples" / "labels.txt"

TFMOBILENET_CONFIG = """\
name: "tfmobilenet"
platform: "tensorflow_savedmodel"
max_batch_size: 8
input [
  {
    name: "input_1"
    data_type: TYPE_FP32
    format: FORMAT_NHWC
    dims: [ 224, 224, 3 ]
  }
]
output [
  {
    name: "predictions"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
"""

TORCHMOBILENET_CONFIG = """\
name: "torchmobilenet"
platform: "pytorch_libtorch"
max_batch_size: 8
input {
  name: "input__0"
  data_type: TYPE_FP32
  format: FORMAT_NCHW
  dims: [ 3, 224, 224 ]
}
output {
  name: "output__0"
  data_type: TYPE_FP32
  dims: [ 1000 ]
  label_filename: "labels.txt"
}
default_model_filename: "model.pt"
"""


def _calibration_pixels(layout: str) -> np.ndarray:
    x = np.random.default_rng(0).uniform(0, 255, (8, 224, 224, 3)).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x)


def _model_folder(repo: Path, name: str, config: str) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    shutil.copyfile(LABELS, folder / "labels.txt")
    return folder


def build_torchmobilenet(repo: Path) -> Path:
    """torchmobilenet/{config.pbtxt, labels.txt, 1/model.pt}: a traced hand-written MobileNetV2."""
    import torch

    from tests.backends.mobilenet_v2_torch import MobileNetV2

    torch.manual_seed(0)
    model = MobileNetV2()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0  # running statistics = this one batch's
    with torch.no_grad():
        model.train()(torch.from_numpy(_calibration_pixels("NCHW")))
        traced = torch.jit.trace(model.eval(), torch.zeros(1, 3, 224, 224))
    folder = _model_folder(repo, "torchmobilenet", TORCHMOBILENET_CONFIG)
    traced.save(str(folder / "1" / "model.pt"))
    return folder


def build_tfmobilenet(repo: Path) -> Path:
    """tfmobilenet/{config.pbtxt, labels.txt, 1/model.savedmodel/}: tf_keras MobileNetV2, saved by Keras."""
    import tf_keras

    tf_keras.backend.clear_session()  # the input layer is then "input_1", as in the blog
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.applications.MobileNetV2(weights=None)
    batch_norms = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    for layer in batch_norms:
        layer.momentum = 0.0  # moving statistics = this one batch's
    model(_calibration_pixels("NHWC"), training=True)
    for layer in batch_norms:
        layer.momentum = 0.99
    folder = _model_folder(repo, "tfmobilenet", TFMOBILENET_CONFIG)
    model.save(str(folder / "1" / "model.savedmodel"), save_format="tf")
    return folder


@pytest.fixture(scope="session")
def blog_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("blog") / "models"
    build_torchmobilenet(repo)
    build_tfmobilenet(repo)
    return repo


@pytest.fixture(scope="session")
def blog_server(start_server, blog_repo) -> RunningServer:
    return start_server("--model-repository", blog_repo)


@pytest.fixture(scope="session")
def torchmobilenet_module(blog_repo):
    """torch's own view of the served file."""
    import torch

    return torch.jit.load(str(blog_repo / "torchmobilenet" / "1" / "model.pt")).eval()


@pytest.fixture(scope="session")
def tfmobilenet_signature(blog_repo):
    """TensorFlow's own view of the served SavedModel: its serving_default signature."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(blog_repo / "tfmobilenet" / "1" / "model.savedmodel"))
    signature = loaded.signatures["serving_default"]
    signature.loaded = loaded  # the signature needs the loaded object (its variables) alive
    return signature
