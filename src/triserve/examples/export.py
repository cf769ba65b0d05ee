"""`triserve export-examples DIR`: ready-to-serve example models built from real ImageNet weights."""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("triserve")

STEPS = 9  # what export_examples does, each logged as "[i/STEPS] ..." with the seconds it took
PHOTO = Path("images") / "kitten.jpg"  # under the output folder: scikit-image's `chelsea`, a tabby cat

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


# Image in, top-k out: a Python model decodes and prepares the image (the same resize and crop as
# TorchServe's image_classifier, vision/images.py) and the ensemble hands its pixels to the ONNX model.
PREPROCESS_CONFIG = """\
name: "preprocess"
backend: "python"
max_batch_size: 8
input [
  {
    name: "image"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }
]
output [
  {
    name: "pixels"
    data_type: TYPE_FP32
    dims: [ 3, 224, 224 ]
  }
]
instance_group [ { kind: KIND_CPU count: 2 } ]
dynamic_batching { }
"""

PREPROCESS_MODEL = '''\
"""Encoded images (JPEG, PNG, ...) in, RGB pixels 0..255 out, NCHW float32 [3, 224, 224]:
resize the short side to 256, crop the centre 224 x 224 (what TorchServe's image_classifier does)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from triserve.errors import ServerError
from triserve.vision.images import IMAGENET_MEAN, IMAGENET_STD, decode, imagenet_preprocess


def pixels(data) -> np.ndarray:
    x = imagenet_preprocess(decode(bytes(data)))  # ImageNet-normalised; this model wants 0..255
    return ((x * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]) * 255).astype(np.float32)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            try:
                batch = np.stack([pixels(item) for item in images.reshape(-1)])
            except ServerError as e:  # not an image: the client's error
                error = pb_utils.TritonError(e.message, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("pixels", batch)]))
        return responses
'''

JPEG_CONFIG = """\
name: "efficientnet_lite0_jpeg"
platform: "ensemble"
max_batch_size: 8
input [
  {
    name: "image"
    data_type: TYPE_STRING
    dims: [ 1 ]
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
ensemble_scheduling {
  step [
    {
      model_name: "preprocess"
      model_version: -1
      input_map { key: "image" value: "image" }
      output_map { key: "pixels" value: "pixels" }
    },
    {
      model_name: "efficientnet_lite0_onnx"
      model_version: -1
      input_map { key: "input" value: "pixels" }
      output_map { key: "output" value: "output" }
    }
  ]
}
"""


def export_jpeg_ensemble(repo: Path) -> Path:
    """`preprocess` (Python) and `efficientnet_lite0_jpeg` (the ensemble of it and the ONNX model)."""
    preprocess = repo / "preprocess"
    (preprocess / "1").mkdir(parents=True, exist_ok=True)
    (preprocess / "config.pbtxt").write_text(PREPROCESS_CONFIG)
    (preprocess / "1" / "model.py").write_text(PREPROCESS_MODEL)
    return _model_folder(repo, "efficientnet_lite0_jpeg", JPEG_CONFIG)


def _model_folder(repo: Path, name: str, config: str) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config)
    shutil.copyfile(LABELS, folder / "labels.txt")
    return folder


class Steps:
    """Numbered progress lines: "[i/n] what ..." when a step starts, "[i/n] done in 12.3 s" when it ends."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.done += 1
        prefix = f"[{self.done}/{self.total}]"
        log.info("%s %s ...", prefix, what)
        start = time.monotonic()
        yield
        log.info("%s done in %.1f s", prefix, time.monotonic() - start)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def export_photo(out: Path) -> Path:
    """`out/images/kitten.jpg`: scikit-image's bundled `chelsea` photo (a tabby cat), for `triserve classify`."""
    import skimage.data
    from PIL import Image

    path = out / PHOTO
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.chelsea()).save(path, format="JPEG", quality=95)
    return path


def export_examples(out: Path) -> Path:
    """Write `out/model_repository/`, `out/model_store/` and `out/images/kitten.jpg`; returns the
    repository's path. Inputs are RGB pixels 0..255, outputs softmax.

    The same EfficientNet-Lite0 three times: ONNX and TorchScript (NCHW) exported from the torch
    module, and a SavedModel (NHWC) of its Keras twin; each export is checked against torch. The
    ONNX model is also converted to OpenVINO IR (efficientnet_lite0_openvino, checked against
    onnxruntime).
    Each step is logged as it starts and with the seconds it took (the first takes a while: torch).
    """
    steps = Steps(STEPS)
    with steps.step(f"writing the photo {out / PHOTO} (scikit-image's chelsea)"):
        export_photo(out)
    with steps.step("importing torch"):
        from triserve.examples import efficientnet_lite0 as enl

    repo = out / "model_repository"
    with steps.step("exporting efficientnet_lite0_onnx (ONNX) and checking it against torch"):
        folder = _model_folder(repo, "efficientnet_lite0_onnx", ONNX_CONFIG)
        diff = enl.export_onnx(folder / "1" / "model.onnx", layout="NCHW", softmax=True)
        log.info("    wrote %s (max difference to torch %.2g)", folder, diff)

    from triserve.examples.efficientnet_lite0_openvino import OPENVINO_NAME, export_openvino, openvino_config

    with steps.step(f"converting it to {OPENVINO_NAME} (OpenVINO IR) and checking it against onnxruntime"):
        onnx_file = folder / "1" / "model.onnx"
        folder = _model_folder(repo, OPENVINO_NAME, openvino_config(ONNX_CONFIG))
        diff = export_openvino(onnx_file, folder / "1" / "model.xml")
        log.info("    wrote %s (max difference to onnxruntime %.2g)", folder, diff)

    with steps.step("exporting efficientnet_lite0_torch (TorchScript) and checking it against torch"):
        folder = _model_folder(repo, "efficientnet_lite0_torch", TORCH_CONFIG)
        diff = enl.export_torchscript(folder / "1" / "model.pt", layout="NCHW", softmax=True)
        log.info("    wrote %s (max difference to torch %.2g)", folder, diff)

    with steps.step("importing TensorFlow and Keras"):
        from triserve.examples import efficientnet_lite0_keras as enl_keras

    with steps.step("exporting efficientnet_lite0_tf (SavedModel, weights ported to Keras) and checking it against torch"):
        folder = _model_folder(repo, "efficientnet_lite0_tf", TF_CONFIG)
        saved = folder / "1" / "model.savedmodel"
        shutil.rmtree(saved, ignore_errors=True)  # a SavedModel folder is rewritten whole
        diff = enl_keras.export_savedmodel(saved)
        log.info("    wrote %s (max difference to torch %.2g)", folder, diff)

    with steps.step("writing efficientnet_lite0_jpeg (an ensemble: Python image preprocessing, then the ONNX model)"):
        log.info("    wrote %s", export_jpeg_ensemble(repo))

    from triserve.examples.model_store import export_model_store

    with steps.step("writing the TorchServe archive model_store/efficientnet_lite0.mar"):
        export_model_store(out)  # TorchServe: out/model_store/efficientnet_lite0.mar
    log.info("example models written in %.1f s", steps.elapsed())
    return repo
