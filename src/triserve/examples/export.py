"""`triserve export-examples DIR`: ready-to-serve example models built from real ImageNet weights."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger("triserve")

LABELS = Path(__file__).with_name("labels.txt")

ONNX_CONFIG = """\
name: "efficientnet_lite0_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "output"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
dynamic_batching { }
"""

# TorchScript: Triton's pytorch backend binds `<name>__<index>` to forward()'s arguments / results.
TORCH_CONFIG = """\
name: "efficientnet_lite0_torch"
platform: "pytorch_libtorch"
max_batch_size: 8
input [
  {
    name: "input__0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "output__0"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
dynamic_batching { }
"""

# SavedModel: the names are the keys of its `serving_default` signature.
TF_CONFIG = """\
name: "efficientnet_lite0_tf"
platform: "tensorflow_savedmodel"
max_batch_size: 8
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NHWC
    dims: [ 224, 224, 3 ]
  }
]
output [
  {
    name: "output"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
dynamic_batching { }
"""


def _model_folder(repo: Path, name: str, config: str) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config)
    shutil.copyfile(LABELS, folder / "labels.txt")
    return folder


def export_examples(out: Path) -> Path:
    """Write `out/model_repository/`; returns its path. Inputs are RGB pixels 0..255, outputs softmax.

    The same EfficientNet-Lite0 three times: ONNX and TorchScript (NCHW) exported from the torch
    module, and a SavedModel (NHWC) of its Keras twin; each export is checked against torch.
    """
    from triserve.examples import efficientnet_lite0 as enl

    repo = out / "model_repository"
    folder = _model_folder(repo, "efficientnet_lite0_onnx", ONNX_CONFIG)
    diff = enl.export_onnx(folder / "1" / "model.onnx", layout="NCHW", softmax=True)
    log.info("wrote %s (max difference to torch %.2g)", folder, diff)

    folder = _model_folder(repo, "efficientnet_lite0_torch", TORCH_CONFIG)
    diff = enl.export_torchscript(folder / "1" / "model.pt", layout="NCHW", softmax=True)
    log.info("wrote %s (max difference to torch %.2g)", folder, diff)

    from triserve.examples import efficientnet_lite0_keras as enl_keras

    folder = _model_folder(repo, "efficientnet_lite0_tf", TF_CONFIG)
    saved = folder / "1" / "model.savedmodel"
    shutil.rmtree(saved, ignore_errors=True)  # a SavedModel folder is rewritten whole
    diff = enl_keras.export_savedmodel(saved)
    log.info("wrote %s (max difference to torch %.2g)", folder, diff)

    from triserve.examples.model_store import export_model_store

    export_model_store(out)  # TorchServe: out/model_store/efficientnet_lite0.mar
    return repo
