"""Tiny real models and a real data plane in the test's own event loop, for in-process tests of
every protocol adapter (httpx's ASGITransport over the adapter's Starlette app, or an in-process
grpc.aio server).

The models are ONNX graphs written with onnx.helper, run by onnxruntime like any other model:
- `simple`: Triton's example model, INT32 INPUT0/INPUT1 [-1, 16] -> OUTPUT0 = sum, OUTPUT1 = difference;
- `scores`: FP32 INPUT [-1, 5] -> OUTPUT, the same values, with labels.txt (for classification);
- `doubler`: FP32 x [-1, 3] -> y = 2x, no config.pbtxt (auto-completed).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator

import onnx
from onnx import TensorProto, helper

from triserve.core.catalog import Catalog, Registry
from triserve.core.dataplane import DataPlane
from triserve.core.manager import ModelManager
from triserve.repository.triton import TritonRepositories
from triserve.repository.uploads import UploadedModels

LABELS = ["zero", "one", "two", "three", "four"]

SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

SCORES_CONFIG = """
name: "scores"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 5 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 5 ] label_filename: "labels.txt" } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what every onnxruntime since 1.14 reads
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def simple_onnx(path: Path) -> None:
    tensor = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 16])  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]), helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "simple",
        [tensor("INPUT0"), tensor("INPUT1")],
        [tensor("OUTPUT0"), tensor("OUTPUT1")],
    )
    _save(graph, path)


def scores_onnx(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT"], ["OUTPUT"])],
        "scores",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", 5])],
    )
    _save(graph, path)


def doubler_onnx(path: Path) -> None:
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[two],
    )
    _save(graph, path)


def tiny_repository(root: Path) -> Path:
    """A Triton model repository with `simple`, `scores` and `doubler` (version 1 each)."""
    simple_onnx(root / "simple" / "1" / "model.onnx")
    (root / "simple" / "config.pbtxt").write_text(SIMPLE_CONFIG)
    scores_onnx(root / "scores" / "1" / "model.onnx")
    (root / "scores" / "config.pbtxt").write_text(SCORES_CONFIG)
    (root / "scores" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    doubler_onnx(root / "doubler" / "1" / "model.onnx")
    return root


@contextlib.asynccontextmanager
async def running_dataplane(
    catalogs: list[Catalog],
    control_mode: str = "none",
    load_models: list[str] | None = None,
    strict_readiness: bool = True,
    registry: Registry | None = None,
    configurable: Catalog | None = None,
    allow_custom_code: bool = False,
) -> AsyncIterator[DataPlane]:
    """A data plane over `catalogs`, started as `triserve serve` starts it (none and poll mode:
    every model; explicit: `load_models`), closed after."""
    manager = ModelManager(catalogs, control_mode, UploadedModels(), allow_custom_code)
    dataplane = DataPlane(manager, strict_readiness, registry, configurable)
    await manager.start(load_models)
    try:
        yield dataplane
    finally:
        await manager.close()


def triton_dataplane(repository: Path, **kwargs) -> contextlib.AbstractAsyncContextManager[DataPlane]:
    return running_dataplane([TritonRepositories([repository])], **kwargs)
