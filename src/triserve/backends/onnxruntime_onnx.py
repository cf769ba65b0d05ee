"""ONNX Runtime backend (`platform: "onnxruntime_onnx"`).

Threads: each instance gets `InstanceSettings.threads` intra-op threads and one inter-op
thread, so that instances x threads equals the cores (see core/instances.py). Config
`parameters` `intra_op_thread_count` / `inter_op_thread_count` override, as in Triton's
onnxruntime backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as mc

from triserve.backends import InstanceSettings, check_dims, count_parameter
from triserve.errors import internal, invalid

BACKEND = "onnxruntime"
DEFAULT_FILENAME = "model.onnx"
DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config default-max-batch-size

_TYPES = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
}


def _model_path(model_file: Path) -> Path:
    # Triton accepts a folder holding model.onnx (models with external weights).
    return model_file / DEFAULT_FILENAME if model_file.is_dir() else model_file


def _open(model_file: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    path = _model_path(model_file)
    if not path.exists():
        raise invalid(f"model file {path} not found")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # ORT raises its own exception types for corrupt files
        raise invalid(f"onnxruntime could not load {path}: {e}") from None


def _dims(shape: list) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def autocomplete(config: mc.ModelConfig, model_file: Path) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = _open(model_file, options, ["CPUExecutionProvider"])
    graph_inputs, graph_outputs = session.get_inputs(), session.get_outputs()
    all_dims = [_dims(t.shape) for t in graph_inputs + graph_outputs]
    batching = bool(all_dims) and all(d and d[0] == -1 for d in all_dims)
    if config.max_batch_size == 0 and not config.input and not config.output and batching:
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
    skip = 1 if config.max_batch_size > 0 else 0
    if not config.input:
        for t in graph_inputs:
            config.input.add(name=t.name, data_type=_TYPES.get(t.type, "TYPE_INVALID"), dims=_dims(t.shape)[skip:])
    if not config.output:
        for t in graph_outputs:
            config.output.add(name=t.name, data_type=_TYPES.get(t.type, "TYPE_INVALID"), dims=_dims(t.shape)[skip:])
    if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
        # Triton's onnxruntime backend turns the dynamic batcher on for auto-completed batching models.
        config.dynamic_batching.SetInParent()


class OnnxModel:
    def __init__(self, config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = count_parameter(config, "intra_op_thread_count", settings.threads)
        options.inter_op_num_threads = count_parameter(config, "inter_op_thread_count", 1)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if settings.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise invalid(
                    f"model '{config.name}' asks for KIND_GPU but this onnxruntime has no CUDA provider"
                )
            device_id = int(settings.device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        self.session = _open(model_file, options, providers)
        _check_signature(config, self.session)

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(outputs, inputs)
        except Exception as e:
            raise internal(f"onnxruntime failed: {e}") from None
        return dict(zip(outputs, results))

    def close(self) -> None:
        del self.session


def load(config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> OnnxModel:
    return OnnxModel(config, model_file, settings)


def _check_signature(config: mc.ModelConfig, session: ort.InferenceSession) -> None:
    """Names, datatypes and dims in the config must fit the graph."""
    for kind, declared, actual in (
        ("input", config.input, session.get_inputs()),
        ("output", config.output, session.get_outputs()),
    ):
        graph = {t.name: t for t in actual}
        for tensor in declared:
            if tensor.name not in graph:
                raise invalid(
                    f"unable to load model '{config.name}': configuration {kind} '{tensor.name}'"
                    f" is not in the model; it has {sorted(graph)}"
                )
            node = graph[tensor.name]
            expected = _TYPES.get(node.type)
            given = mc.DataType.Name(tensor.data_type)
            if expected != given:
                raise invalid(
                    f"unable to load model '{config.name}': {kind} '{tensor.name}' has datatype"
                    f" {expected} in the model but {given} in the configuration"
                )
            check_dims(config, kind, tensor, _dims(node.shape))
