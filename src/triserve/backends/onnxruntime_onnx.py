"""ONNX Runtime backend (`platform: "onnxruntime_onnx"`).

Threads: each instance gets `InstanceSettings.threads` intra-op threads and one inter-op
thread, so that instances x threads equals the cores (see core/instances.py). With
`InstanceSettings.wide_threads` it keeps a second session with that many threads, for the
executions that start while no other runs (EXECUTION.alone): one request in flight gets every
core, many get one each. Config `parameters` `intra_op_thread_count` / `inter_op_thread_count`
override (and then there is no wide session), as in Triton's onnxruntime backend.

Strings: a BYTES tensor (numpy object array of `bytes`) reaches an ONNX `tensor(string)` input
as `str` items, as Triton's onnxruntime backend hands each element's bytes to the string tensor
(ORT's Python API takes only `str`, which it encodes as UTF-8, so the bytes ORT sees are the
client's bytes). ORT's Python API cannot carry bytes that are not UTF-8: such an element is
refused (400) rather than altered. String outputs come back as `bytes` (UTF-8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as mc

from triserve.backends import EXECUTION, InstanceSettings, check_dims, count_parameter
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
        threads = count_parameter(config, "intra_op_thread_count", settings.threads)
        providers = ["CPUExecutionProvider"]
        if settings.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise invalid(
                    f"model '{config.name}' asks for KIND_GPU but this onnxruntime has no CUDA provider"
                )
            device_id = int(settings.device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        self.session = _open(model_file, _options(config, threads), providers)
        _check_signature(config, self.session)
        explicit = any(name.lower() == "intra_op_thread_count" for name in config.parameters)
        self.wide_session: ort.InferenceSession | None = None
        if settings.wide_threads > threads and settings.device == "cpu" and not explicit:
            # One session for the version's executions that run alone: at most one execution in
            # the process runs alone at a time, so the instances share it (one more copy of the weights).
            if WIDE_SESSION not in settings.shared:
                settings.shared[WIDE_SESSION] = _open(model_file, _options(config, settings.wide_threads), providers)
            self.wide_session = settings.shared[WIDE_SESSION]
        self._text_inputs = {t.name for t in self.session.get_inputs() if t.type == STRING}
        self._text_outputs = {t.name for t in self.session.get_outputs() if t.type == STRING}

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        feed = {name: _to_text(name, a) if name in self._text_inputs else a for name, a in inputs.items()}
        session = self.wide_session if self.wide_session is not None and EXECUTION.alone else self.session
        try:
            results = session.run(outputs, feed)
        except UnicodeDecodeError:  # ORT decodes string outputs as UTF-8 for its Python API
            raise internal(
                "onnxruntime failed: a string output holds bytes that are not UTF-8,"
                " which onnxruntime's Python API cannot return"
            ) from None
        except Exception as e:
            raise internal(f"onnxruntime failed: {e}") from None
        return {
            name: _to_bytes(result) if name in self._text_outputs else result for name, result in zip(outputs, results)
        }

    def close(self) -> None:
        del self.session, self.wide_session


def _options(config: mc.ModelConfig, threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = count_parameter(config, "inter_op_thread_count", 1)
    spinning = _spinning(config)
    if spinning is not None:
        options.add_session_config_entry(SPINNING, spinning)
    if spinning != "0" and threads > 1:
        # Pool threads spin between the operators of a run (no wake-up per operator) but stop as
        # soon as the last run returns: left spinning, they took the cores the server's own work
        # and the other instances' runs needed.
        options.add_session_config_entry(SPINNING_STOP, "1")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


STRING = "tensor(string)"
WIDE_SESSION = "onnxruntime wide session"  # its key in InstanceSettings.shared
SPINNING = "session.intra_op.allow_spinning"  # ORT's session config key, also taken as a config parameter
SPINNING_STOP = "session.force_spinning_stop"  # ORT's: pool threads stop spinning when the last run returns


def _spinning(config: mc.ModelConfig) -> str | None:
    """Whether intra-op pool threads busy-wait for work: config parameter
    `session.intra_op.allow_spinning` ("0" or "1"), else None (onnxruntime's default: they do)."""
    for name, value in config.parameters.items():
        if name.lower() == SPINNING:
            text = value.string_value.strip()
            if text not in ("0", "1"):
                raise invalid(f"parameter '{name}' of model '{config.name}' must be 0 or 1, got '{text}'")
            return text
    return None


def _to_text(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES elements (bytes; str passes) as the str items ORT's string tensors take."""
    if array.dtype != np.object_:
        array = array.astype(np.object_)  # fixed-width numpy text
    text = np.empty(array.shape, dtype=np.object_)
    flat = text.reshape(-1)
    try:
        for i, item in enumerate(array.flat):
            flat[i] = item if isinstance(item, str) else bytes(item).decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(
            f"input '{name}': element {i} is not UTF-8 text ({e.reason} at byte {e.start});"
            " onnxruntime string tensors take UTF-8 text only"
        ) from None
    except TypeError:
        raise invalid(f"input '{name}': element {i} is not bytes or text") from None
    return text


def _to_bytes(array: np.ndarray) -> np.ndarray:
    """ORT's str items back to the bytes every BYTES tensor holds."""
    result = np.empty(array.shape, dtype=np.object_)
    flat = result.reshape(-1)
    for i, item in enumerate(array.flat):
        flat[i] = item.encode("utf-8") if isinstance(item, str) else item
    return result


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
    if config.HasField("sequence_batching"):
        _check_sequence_tensors(config, session)


def _check_sequence_tensors(config: mc.ModelConfig, session: ort.InferenceSession) -> None:
    """Sequence batching: the control and state inputs the server fills in, and the state
    outputs it reads back, must be in the graph with the configured datatypes, and every graph
    input must be fed by someone (never READY-then-fail on a missing input)."""
    inputs = {t.name: t for t in session.get_inputs()}
    outputs = {t.name: t for t in session.get_outputs()}
    fed = {t.name for t in config.input}
    sb = config.sequence_batching
    tensors = []
    for control_input in sb.control_input:
        for c in control_input.control:
            if c.kind == mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID:
                data_type = mc.DataType.Name(c.data_type)
            elif len(c.fp32_false_true):
                data_type = "TYPE_FP32"
            elif len(c.bool_false_true):
                data_type = "TYPE_BOOL"
            else:
                data_type = "TYPE_INT32"
            tensors.append(("sequence control input", control_input.name, data_type, inputs))
    for state in sb.state:
        data_type = mc.DataType.Name(state.data_type)
        tensors.append(("state input", state.input_name, data_type, inputs))
        tensors.append(("state output", state.output_name, data_type, outputs))
    for kind, name, data_type, graph in tensors:
        if name not in graph:
            raise invalid(
                f"unable to load model '{config.name}': {kind} '{name}' is not in the model; it has {sorted(graph)}"
            )
        if _TYPES.get(graph[name].type) != data_type:
            raise invalid(
                f"unable to load model '{config.name}': {kind} '{name}' has datatype"
                f" {_TYPES.get(graph[name].type)} in the model but {data_type} in the configuration"
            )
        if graph is inputs:
            fed.add(name)
    missing = sorted(set(inputs) - fed)
    if missing:
        raise invalid(
            f"unable to load model '{config.name}': model input(s) {missing} are neither configuration inputs nor"
            " sequence batching control or state inputs"
        )
