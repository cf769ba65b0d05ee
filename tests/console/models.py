"""A tiny real image classifier for the console's tests: `colors` (ONNX, FP32 [-1, 3, 8, 8] NCHW
pixels 0..255 -> the mean of each channel, labels red/green/blue), next to tests/inprocess.py's
`simple`, `scores` and `doubler`."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tests.inprocess import tiny_repository

COLORS_CONFIG = """
name: "colors"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "pixels" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 8, 8 ] } ]
output [ { name: "scores" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def colors_onnx(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixels"], ["scores"], axes=[2, 3], keepdims=0)],
        "colors",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def console_repository(root: Path) -> Path:
    """tiny_repository's models and `colors`."""
    tiny_repository(root)
    colors_onnx(root / "colors" / "1" / "model.onnx")
    (root / "colors" / "config.pbtxt").write_text(COLORS_CONFIG)
    (root / "colors" / "labels.txt").write_text("red\ngreen\nblue\n")
    return root
