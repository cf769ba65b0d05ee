"""Models the hostile tests add to the tiny repository (tests/inprocess.py)."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

from tests.inprocess import _save, tiny_repository

ECHO_CONFIG = """
name: "echo"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "ECHO" data_type: TYPE_STRING dims: [ -1 ] } ]
"""


def echo_repository(root: Path) -> Path:
    """The tiny repository plus `echo`: BYTES TEXT [-1, -1] -> ECHO, the same strings."""
    tiny_repository(root)
    text = lambda name: helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", "n"])  # noqa: E731
    graph = helper.make_graph([helper.make_node("Identity", ["TEXT"], ["ECHO"])], "echo", [text("TEXT")], [text("ECHO")])
    _save(graph, root / "echo" / "1" / "model.onnx")
    (root / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    return root
