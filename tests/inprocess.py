"""Tiny real models and a real data plane in the test's own event loop, for in-process tests of
every protocol adapter (httpx's ASGITransport over the adapter's Starlette app, or an in-process
grpc.aio server).

The models are ONNX graphs written with onnx.helper, run by onnxruntime like any other model:
- `simple`: Triton's example model, INT32 INPUT0/INPUT1 [-1, 16] -> OUTPUT0 = sum, OUTPUT1 = difference;
- `scores`: FP32 INPUT [-1, 5] -> OUTPUT, the same values, with labels.txt (for classification);
- `doubler`: FP32 x [-1, 3] -> y = 2x, no config.pbtxt (auto-completed).
`string_repository` writes `simple_string` (Triton's example graph: STRING INPUT0/INPUT1 [-1, 16],
each Cast to INT32, OUTPUT0 = sum, OUTPUT1 = difference, Cast back to STRING) and `simple_identity`
(Triton's example, a Python model there: STRING INPUT0 [-1, -1] -> OUTPUT0, the same strings).
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


SIMPLE_STRING_CONFIG = """
name: "simple_string"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_STRING dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_STRING dims: [ 16 ] } ]
"""

SIMPLE_IDENTITY_CONFIG = """
name: "simple_identity"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
"""


def simple_string_onnx(path: Path) -> None:
    tensor = lambda name: helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", 16])  # noqa: E731
    cast = lambda source, target, to: helper.make_node("Cast", [source], [target], to=to)  # noqa: E731
    graph = helper.make_graph(
        [
            cast("INPUT0", "_INPUT0", TensorProto.INT32),
            cast("INPUT1", "_INPUT1", TensorProto.INT32),
            helper.make_node("Add", ["_INPUT0", "_INPUT1"], ["SUM"]),
            helper.make_node("Sub", ["_INPUT0", "_INPUT1"], ["DIFFERENCE"]),
            cast("SUM", "OUTPUT0", TensorProto.STRING),
            cast("DIFFERENCE", "OUTPUT1", TensorProto.STRING),
        ],
        "simple_string",
        [tensor("INPUT0"), tensor("INPUT1")],
        [tensor("OUTPUT0"), tensor("OUTPUT1")],
    )
    _save(graph, path)


def string_identity_onnx(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "simple_identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["batch", "n"])],
    )
    _save(graph, path)


def string_repository(root: Path) -> Path:
    """A Triton model repository with `simple_string` and `simple_identity` (version 1 each)."""
    simple_string_onnx(root / "simple_string" / "1" / "model.onnx")
    (root / "simple_string" / "config.pbtxt").write_text(SIMPLE_STRING_CONFIG)
    string_identity_onnx(root / "simple_identity" / "1" / "model.onnx")
    (root / "simple_identity" / "config.pbtxt").write_text(SIMPLE_IDENTITY_CONFIG)
    return root


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


# -- sequence batching models ---------------------------------------------------------------------
# `simple_sequence`: Triton's example graph (docs/examples/model_repository/simple_sequence):
# OUTPUT = READY * (INPUT + START), INT32 [-1, 1], START and READY filled in by the sequence batcher.
# `accumulate`: an accumulator on implicit state: OUTPUT = STATE_OUT = STATE + INPUT.
# `controls`: every control kind echoed back (START fp32, END bool, READY int32, CORRID string).

SIMPLE_SEQUENCE_CONFIG = """
name: "simple_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""

ACCUMULATE_CONFIG = """
name: "accumulate"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 60000000
  state [ { input_name: "STATE" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""

CONTROLS_CONFIG = """
name: "controls"
platform: "onnxruntime_onnx"
max_batch_size: 4
sequence_batching {
  direct { }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ -1, 2 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 7 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [
  { name: "START_OUT" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "END_OUT" data_type: TYPE_BOOL dims: [ 1 ] },
  { name: "READY_OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "CORRID_OUT" data_type: TYPE_STRING dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def simple_sequence_onnx(path: Path) -> None:
    tensor = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT", "START"], ["SUM"]), helper.make_node("Mul", ["READY", "SUM"], ["OUTPUT"])],
        "simple_sequence",
        [tensor("INPUT"), tensor("START"), tensor("READY")],
        [tensor("OUTPUT")],
    )
    _save(graph, path)


def accumulate_onnx(path: Path, batching: bool = True) -> None:
    shape = ["batch", 1] if batching else [1]  # without batching: for max_batch_size 0
    tensor = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, shape)  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Add", ["STATE", "INPUT"], ["STATE_OUT"]), helper.make_node("Identity", ["STATE_OUT"], ["OUTPUT"])],
        "accumulate",
        [tensor("INPUT"), tensor("STATE")],
        [tensor("OUTPUT"), tensor("STATE_OUT")],
    )
    _save(graph, path)


def controls_onnx(path: Path) -> None:
    types = {"INPUT": TensorProto.FLOAT, "START": TensorProto.FLOAT, "END": TensorProto.BOOL,
             "READY": TensorProto.INT32, "CORRID": TensorProto.STRING}
    tensor = lambda name, t: helper.make_tensor_value_info(name, t, ["batch", 1])  # noqa: E731
    names = ["START", "END", "READY", "CORRID"]
    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [f"{n}_OUT"]) for n in names],
        "controls",
        [tensor(n, t) for n, t in types.items()],
        [tensor(f"{n}_OUT", types[n]) for n in names],
    )
    _save(graph, path)


def sequence_repository(root: Path) -> Path:
    """A Triton model repository with `simple_sequence`, `accumulate` and `controls`."""
    simple_sequence_onnx(root / "simple_sequence" / "1" / "model.onnx")
    (root / "simple_sequence" / "config.pbtxt").write_text(SIMPLE_SEQUENCE_CONFIG)
    accumulate_onnx(root / "accumulate" / "1" / "model.onnx")
    (root / "accumulate" / "config.pbtxt").write_text(ACCUMULATE_CONFIG)
    controls_onnx(root / "controls" / "1" / "model.onnx")
    (root / "controls" / "config.pbtxt").write_text(CONTROLS_CONFIG)
    return root


# The `--dyna` models of Triton's sequence examples (its dyna_sequence custom backend, rebuilt as ONNX):
# `simple_dyna_sequence`: OUTPUT = READY * (INPUT + START) + END * CORRID (uint64 correlation id);
# `simple_string_dyna_sequence`: an accumulator on implicit state that adds the string correlation
# id, read as a number, on the END request: OUTPUT = (STATE += INPUT) + END * int(CORRID).

DYNA_CONTROLS = """
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: %s } ] }
"""

DYNA_SEQUENCE_CONFIG = """
name: "%s"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {
  oldest { max_candidate_sequences: 4 }
  control_input [ %s ]
  %s
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


def dyna_sequence_onnx(path: Path, string_ids: bool) -> None:
    int32 = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])  # noqa: E731
    corrid = helper.make_tensor_value_info("CORRID", TensorProto.STRING if string_ids else TensorProto.UINT64, ["batch", 1])
    nodes = [helper.make_node("Cast", ["CORRID"], ["ID"], to=TensorProto.INT32), helper.make_node("Mul", ["END", "ID"], ["ADDED"])]
    if string_ids:
        nodes += [
            helper.make_node("Add", ["STATE", "INPUT"], ["STATE_OUT"]),
            helper.make_node("Add", ["STATE_OUT", "ADDED"], ["OUTPUT"]),
        ]
        inputs = [int32("INPUT"), int32("START"), int32("END"), int32("READY"), corrid, int32("STATE")]
        outputs = [int32("OUTPUT"), int32("STATE_OUT")]
    else:
        nodes += [
            helper.make_node("Add", ["INPUT", "START"], ["SUM"]),
            helper.make_node("Mul", ["READY", "SUM"], ["VALUE"]),
            helper.make_node("Add", ["VALUE", "ADDED"], ["OUTPUT"]),
        ]
        inputs = [int32("INPUT"), int32("START"), int32("END"), int32("READY"), corrid]
        outputs = [int32("OUTPUT")]
    _save(helper.make_graph(nodes, "dyna_sequence", inputs, outputs), path)


def dyna_sequence_repository(root: Path) -> Path:
    """`simple_dyna_sequence` and `simple_string_dyna_sequence` (what the examples' --dyna runs)."""
    state = 'state [ { input_name: "STATE" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]'
    for name, string_ids in (("simple_dyna_sequence", False), ("simple_string_dyna_sequence", True)):
        dyna_sequence_onnx(root / name / "1" / "model.onnx", string_ids)
        controls = DYNA_CONTROLS % ("TYPE_STRING" if string_ids else "TYPE_UINT64")
        config = DYNA_SEQUENCE_CONFIG % (name, controls, state if string_ids else "")
        (root / name / "config.pbtxt").write_text(config)
    return root


# -- a decoupled model -----------------------------------------------------------------------------
# `repeat`: a Python model in the style of Triton's decoupled `repeat` example: IN INT32 [-1] ->
# one response per element (OUT = that element, [1]), then the final flag alone.
REPEAT_CONFIG = """
name: "repeat"
backend: "python"
model_transaction_policy { decoupled: true }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

REPEAT_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            for value in pb_utils.get_input_tensor_by_name(request, "IN").as_numpy():
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def repeat_repository(root: Path) -> Path:
    """A Triton model repository with the decoupled Python model `repeat` (and the tiny models)."""
    tiny_repository(root)
    (root / "repeat" / "1").mkdir(parents=True)
    (root / "repeat" / "1" / "model.py").write_text(REPEAT_MODEL)
    (root / "repeat" / "config.pbtxt").write_text(REPEAT_CONFIG)
    return root
