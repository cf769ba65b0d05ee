"""OpenVINO backend (`backend: "openvino"`, Triton's name; `pip install 'triserve[openvino]'`).

The version folder holds OpenVINO IR (`model.xml` with its weights `model.bin`), or an ONNX
file (`model.onnx`, or any `default_model_filename`), which OpenVINO reads directly. As with the
other backends, a config without inputs/outputs is completed from the model, a model whose every
tensor has a dynamic first dim gets max_batch_size 4 and the dynamic batcher, and the config's
names, datatypes and dims must fit the model or the load fails.

Threads: each instance is compiled for the CPU with one stream (`NUM_STREAMS` 1) and
`InstanceSettings.threads` inference threads, so instances x threads equals the cores (see
core/instances.py). With `InstanceSettings.wide_threads` the version also keeps one model
compiled with that many threads, shared by its instances, for the executions that start while
no other runs (EXECUTION.alone): one request in flight gets every core, many get one each, as in
the onnxruntime backend. Config `parameters` as Triton's OpenVINO backend reads them override
(`INFERENCE_NUM_THREADS`, `NUM_STREAMS` or `PERFORMANCE_HINT` set: no wide model):
`INFERENCE_NUM_THREADS`, `NUM_STREAMS`, `COMPILATION_NUM_THREADS`, `PERFORMANCE_HINT`
(LATENCY or THROUGHPUT), `HINT_BF16` (YES: compute in bfloat16); and OpenVINO's own
`ENABLE_CPU_PINNING` (YES or NO). Pinning is off unless the config sets it: OpenVINO pinned the
single-threaded instances of a model to the same core, so two of them together ran no faster
than one (EfficientNet-Lite0 on 2 cores: 70-83 images/s pinned, 147-155 not). Triton's other parameters
(CPU_EXTENSION_PATH, SKIP_OV_DYNAMIC_BATCHSIZE, ENABLE_BATCH_PADDING, RESHAPE_IO_LAYERS) are not
implemented: a config that sets one fails to load. BYTES (string) tensors are refused at load.

Precision: OpenVINO's CPU plugin computes FP32 models in bfloat16 on CPUs that have it (this
machine's EPYC does: answers differed from onnxruntime's by 1%). This backend asks for f32
(`INFERENCE_PRECISION_HINT`) unless `HINT_BF16` is YES, so answers match the other backends'.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov
from tritonclient.grpc import model_config_pb2 as mc

from triserve.backends import EXECUTION, InstanceSettings, check_dims, count_parameter
from triserve.errors import internal, invalid

BACKEND = "openvino"
DEFAULT_FILENAME = "model.xml"
DEFAULT_MAX_BATCH_SIZE = 4  # as the onnxruntime backend: Triton's default-max-batch-size
ONNX_FILENAME = "model.onnx"

_TYPES = {
    "boolean": "TYPE_BOOL",
    "u8": "TYPE_UINT8",
    "u16": "TYPE_UINT16",
    "u32": "TYPE_UINT32",
    "u64": "TYPE_UINT64",
    "i8": "TYPE_INT8",
    "i16": "TYPE_INT16",
    "i32": "TYPE_INT32",
    "i64": "TYPE_INT64",
    "f16": "TYPE_FP16",
    "f32": "TYPE_FP32",
    "f64": "TYPE_FP64",
    "string": "TYPE_STRING",
}
_UNSUPPORTED_PARAMETERS = ("CPU_EXTENSION_PATH", "SKIP_OV_DYNAMIC_BATCHSIZE", "ENABLE_BATCH_PADDING",
                           "RESHAPE_IO_LAYERS")
_HINTS = ("LATENCY", "THROUGHPUT")
_LAYOUT_PARAMETERS = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT")  # set: the config chose the threads
WIDE_MODEL = "openvino wide model"  # its key in InstanceSettings.shared

_core: ov.Core | None = None
_core_lock = threading.Lock()


def framework() -> ov.Core:
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def model_path(model_file: Path) -> Path:
    """The file OpenVINO reads: the config's file; for the default `model.xml`, a `model.onnx`
    beside it when there is no IR; a folder is searched for either."""
    if model_file.is_dir():
        for name in (DEFAULT_FILENAME, ONNX_FILENAME):
            if (model_file / name).is_file():
                return model_file / name
        return model_file / DEFAULT_FILENAME
    if not model_file.exists() and model_file.name == DEFAULT_FILENAME and (model_file.parent / ONNX_FILENAME).is_file():
        return model_file.parent / ONNX_FILENAME
    return model_file


def model_files(model_file: Path) -> list[Path]:
    """What the model is made of (IR: the .xml and its .bin weights), for the calibration cache."""
    path = model_path(model_file)
    weights = path.with_suffix(".bin")
    return [path, weights] if path.suffix == ".xml" and weights.is_file() else [path]


def _read(model_file: Path) -> ov.Model:
    path = model_path(model_file)
    if not path.exists():
        raise invalid(f"model file {path} not found (the OpenVINO backend reads {DEFAULT_FILENAME} with its"
                      f" .bin weights, or {ONNX_FILENAME})")
    try:
        return framework().read_model(str(path))
    except Exception as e:  # OpenVINO raises RuntimeError with its own text for broken files
        raise invalid(f"OpenVINO could not read {path.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _name(port) -> str:
    return port.get_any_name()


def _type(port) -> str:
    return _TYPES.get(port.get_element_type().get_type_name(), "TYPE_INVALID")


def _dims(port) -> list[int] | None:
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return None
    return [d.get_length() if d.is_static else -1 for d in shape]


def autocomplete(config: mc.ModelConfig, model_file: Path) -> None:
    model = _read(model_file)
    ports = list(model.inputs) + list(model.outputs)
    all_dims = [_dims(p) for p in ports]
    if any(d is None for d in all_dims):
        raise invalid(f"unable to load model '{config.name}': a tensor of the OpenVINO model has a dynamic rank;"
                      " give its inputs and outputs with dims in the configuration")
    batching = bool(all_dims) and all(d and d[0] == -1 for d in all_dims)
    if config.max_batch_size == 0 and not config.input and not config.output and batching:
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
    skip = 1 if config.max_batch_size > 0 else 0
    if not config.input:
        for p in model.inputs:
            config.input.add(name=_name(p), data_type=_type(p), dims=_dims(p)[skip:])
    if not config.output:
        for p in model.outputs:
            config.output.add(name=_name(p), data_type=_type(p), dims=_dims(p)[skip:])
    if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
        config.dynamic_batching.SetInParent()  # as the onnxruntime backend


def _properties(config: mc.ModelConfig, threads: int) -> dict[str, str]:
    keys = {k.upper(): k for k in config.parameters}
    for key in _UNSUPPORTED_PARAMETERS:
        if key in keys:
            raise invalid(f"unable to load model '{config.name}': the OpenVINO backend parameter '{keys[key]}'"
                          " is not supported by this server")
    properties = {
        "INFERENCE_NUM_THREADS": str(count_parameter(config, "INFERENCE_NUM_THREADS", threads)),
        "NUM_STREAMS": str(count_parameter(config, "NUM_STREAMS", 1)),
        "INFERENCE_PRECISION_HINT": "f32",
    }
    if "HINT_BF16" in keys:
        value = config.parameters[keys["HINT_BF16"]].string_value.strip().upper()
        if value not in ("YES", "NO"):
            raise invalid(f"unable to load model '{config.name}': parameter 'HINT_BF16' must be YES or NO, got '{value}'")
        if value == "YES":
            properties["INFERENCE_PRECISION_HINT"] = "bf16"
    if "COMPILATION_NUM_THREADS" in keys:
        properties["COMPILATION_NUM_THREADS"] = str(count_parameter(config, "COMPILATION_NUM_THREADS", 1))
    properties["ENABLE_CPU_PINNING"] = "NO"
    if "ENABLE_CPU_PINNING" in keys:  # an OpenVINO CPU property (not one of Triton's parameters)
        value = config.parameters[keys["ENABLE_CPU_PINNING"]].string_value.strip().upper()
        if value not in ("YES", "NO"):
            raise invalid(f"unable to load model '{config.name}': parameter 'ENABLE_CPU_PINNING' must be YES or NO,"
                          f" got '{value}'")
        properties["ENABLE_CPU_PINNING"] = value
    if "PERFORMANCE_HINT" in keys:
        hint = config.parameters[keys["PERFORMANCE_HINT"]].string_value.strip().upper()
        if hint not in _HINTS:
            raise invalid(f"unable to load model '{config.name}': parameter 'PERFORMANCE_HINT' must be one of"
                          f" {', '.join(_HINTS)}, got '{hint}'")
        properties["PERFORMANCE_HINT"] = hint
    return properties


class Compiled:
    """One compiled model with its one infer request: one execution at a time."""

    def __init__(self, config: mc.ModelConfig, model: ov.Model, properties: dict[str, str]) -> None:
        try:
            self.model = framework().compile_model(model, "CPU", properties)
        except Exception as e:
            raise invalid(f"OpenVINO could not compile model '{config.name}': {str(e).splitlines()[0] if str(e) else e}") from None
        self.request = self.model.create_infer_request()
        self.lock = threading.Lock()
        self.inputs = {name: port for port in self.model.inputs for name in port.get_names()}
        self.outputs = {name: port for port in self.model.outputs for name in port.get_names()}

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        feed = {self.inputs[name]: np.ascontiguousarray(array) for name, array in inputs.items()}
        with self.lock:
            if not _first_call.done:
                with _first_call.lock:
                    results = self._infer(feed, outputs)
                    _first_call.done = True
                    return results
            return self._infer(feed, outputs)

    def _infer(self, feed: dict, outputs: list[str]) -> dict[str, np.ndarray]:
        try:
            results = self.request.infer(feed)
            return {name: np.array(results[self.outputs[name]]) for name in outputs}
        except Exception as e:
            raise internal(f"OpenVINO failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


class _FirstCall:
    """The process's first infer() runs alone: OpenVINO's Python binding sets up its numpy bridge
    then, and two threads doing that at once deadlocked (one waiting for the GIL inside a C++
    static's initialisation, the other holding the GIL at that static's guard)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = False


_first_call = _FirstCall()


class OpenVINOModel:
    def __init__(self, config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> None:
        if settings.device != "cpu":
            raise invalid(f"model '{config.name}' asks for KIND_GPU but the OpenVINO backend here runs on the CPU only")
        properties = _properties(config, settings.threads)
        model = _read(model_file)
        _check_signature(config, model)
        self.compiled = Compiled(config, model, properties)
        self.wide: Compiled | None = None
        chosen = {k.upper() for k in config.parameters} & set(_LAYOUT_PARAMETERS)
        if settings.wide_threads > settings.threads and not chosen:
            # At most one execution in the process runs alone at a time, so the version's
            # instances share one wide model (one more copy of the weights).
            if WIDE_MODEL not in settings.shared:
                settings.shared[WIDE_MODEL] = Compiled(config, model, _properties(config, settings.wide_threads))
            self.wide = settings.shared[WIDE_MODEL]

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        compiled = self.wide if self.wide is not None and EXECUTION.alone else self.compiled
        return compiled.run(inputs, outputs)

    def close(self) -> None:
        del self.compiled, self.wide


def load(config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> OpenVINOModel:
    return OpenVINOModel(config, model_file, settings)


def _check_signature(config: mc.ModelConfig, model: ov.Model) -> None:
    """Names, datatypes and dims in the config must fit the model; BYTES tensors are refused."""
    for kind, declared, actual in (("input", config.input, model.inputs), ("output", config.output, model.outputs)):
        ports = {name: port for port in actual for name in port.get_names()}
        for tensor in declared:
            port = ports.get(tensor.name)
            if port is None:
                raise invalid(
                    f"unable to load model '{config.name}': configuration {kind} '{tensor.name}'"
                    f" is not in the model; it has {sorted(_name(p) for p in actual)}"
                )
            expected, given = _type(port), mc.DataType.Name(tensor.data_type)
            if expected != given:
                raise invalid(
                    f"unable to load model '{config.name}': {kind} '{tensor.name}' has datatype"
                    f" {expected} in the model but {given} in the configuration"
                )
            if given == "TYPE_STRING":
                raise invalid(f"unable to load model '{config.name}': {kind} '{tensor.name}' is BYTES, which the"
                              " OpenVINO backend does not support")
            dims = _dims(port)
            if dims is not None:
                check_dims(config, kind, tensor, dims)
    if config.HasField("sequence_batching"):
        raise invalid(f"unable to load model '{config.name}': sequence batching is not supported by the OpenVINO backend")
    fed = {t.name for t in config.input}
    missing = sorted(_name(p) for p in model.inputs if not (set(p.get_names()) & fed))
    if missing:
        raise invalid(f"unable to load model '{config.name}': model input(s) {missing} are not configuration inputs")
