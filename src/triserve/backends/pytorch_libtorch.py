"""TorchScript backend (`platform: "pytorch_libtorch"`), binding tensors as Triton's pytorch backend does.

Inputs: if every configured input name is a forward() argument name, by name; else if every name
is `<name>__<index>`, the index is the argument position; else the config order. A forward()
taking one `Dict[str, Tensor]` receives the configured names as keys. Outputs: `<name>__<index>`
picks that element of the returned tuple or list; otherwise the config order does.

TorchScript keeps no input/output datatypes or shapes, so inputs cannot be auto-completed (Triton:
"not supported for pytorch backend"); the error says what forward() takes. Given the inputs,
missing outputs are found by running the model once on zeros.

Strings: as in Triton's pytorch backend, a TYPE_STRING input is a `List[str]` argument of forward()
and a TYPE_STRING output a returned `List[str]`, one-dimensional only (the batch dimension counts:
a batching model's string tensor has no other dims, or a `reshape` to none). Each BYTES element
reaches the model as UTF-8 text (TorchScript strings from Python are text); bytes that are not
UTF-8 are refused. String outputs come back as bytes.

Threads: each instance computes with its share of the cores (config `parameters`
INTRA_OP_THREAD_COUNT, as in Triton), and without that parameter an execution that runs alone
(EXECUTION.alone) uses every core. forward() releases the GIL, so two single-threaded instances
use two cores. torch's intra-op threads are OpenMP's (libgomp), which keeps a team of workers for
every thread that ever ran torch on more than one thread, for as long as that thread lives; once
the workers of all teams outnumber the cores, libgomp stops spinning between parallel regions and
each of the model's few hundred regions waits for a wake-up (EfficientNet-Lite0 on 2 threads: 38
ms a run instead of 17). So work on n > 1 threads runs only on the process's threads kept for n,
at most cores / n of them (their teams then fit the cores), to which the instances and the
executions that run alone hand it; everything else, the load-time runs too, runs on one thread.
On 2 cores that is one thread for all two-threaded work: a second multi-threaded instance would
only have competed for the same cores. The inter-op pool is process-wide: the first TorchScript
model sets it (INTER_OP_THREAD_COUNT, else 1) and a later model asking for another count gets a
warning.
"""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.backends import EXECUTION, InstanceSettings, ProcessThreads, count_parameter, cpu_count
from triserve.errors import ServerError, internal, invalid

log = logging.getLogger("triserve")

BACKEND = "pytorch"
DEFAULT_FILENAME = "model.pt"

_TORCH_TYPES = {
    "TYPE_BOOL": torch.bool,
    "TYPE_UINT8": torch.uint8,
    "TYPE_INT8": torch.int8,
    "TYPE_INT16": torch.int16,
    "TYPE_INT32": torch.int32,
    "TYPE_INT64": torch.int64,
    "TYPE_FP16": torch.float16,
    "TYPE_FP32": torch.float32,
    "TYPE_FP64": torch.float64,
}
_CONFIG_TYPES = {dtype: name for name, dtype in _TORCH_TYPES.items()}
_NAMED_INDEX = re.compile(r"__(\d+)$")


# -- loading ------------------------------------------------------------------------------
def _open(model_file: Path, device: torch.device) -> torch.jit.ScriptModule:
    if not model_file.is_file():
        raise invalid(f"model file {model_file} not found")
    try:
        module = torch.jit.load(str(model_file), map_location=device)
    except Exception as e:  # torch raises RuntimeError (and others) for corrupt or non-TorchScript files
        raise invalid(f"torch.jit.load could not load {model_file}: {_short(e)}") from None
    return module.eval()


def _arguments(module: torch.jit.ScriptModule) -> list[Any]:
    """forward()'s arguments without `self`."""
    args = list(module.forward.schema.arguments)
    if args and args[0].name == "self":
        args = args[1:]
    return args


def _signature_text(module: torch.jit.ScriptModule) -> str:
    """`forward(Tensor input__0) -> Tensor`, for messages."""
    args = ", ".join(f"{a.type} {a.name}" for a in _arguments(module))
    returns = ", ".join(str(r.type) for r in module.forward.schema.returns)
    return f"forward({args}) -> {returns}"


def _device(config: mc.ModelConfig, settings: InstanceSettings) -> torch.device:
    if not settings.device.startswith("cuda"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise invalid(
            f"model '{config.name}' asks for KIND_GPU ({settings.device}) but this torch has no CUDA device"
            f" (torch {torch.__version__}, torch.cuda.is_available() is False); use KIND_CPU"
        )
    return torch.device(settings.device)


# -- threads ------------------------------------------------------------------------------
def _use_threads(count: int) -> None:
    """torch's intra-op thread count on the calling thread. torch keeps one per thread, but
    set_num_threads also sets the default that threads without one take, which stays 1: a thread
    that torch work reaches unasked (a handler's own preprocessing, say) starts no team."""
    if torch.get_num_threads() != count:  # (first gives this thread the default, once)
        torch.set_num_threads(count)
        if count != 1:
            default = threading.Thread(target=torch.set_num_threads, args=(1,))
            default.start()
            default.join()


class _Workers:
    """The process's threads for torch work on `threads` intra-op threads: at most cores / threads
    of them, so that libgomp's teams fit the cores (see the module's doc). They outlive models."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=max(1, cpu_count() // threads),
                                            thread_name_prefix=f"torch-{threads}-threads")

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._executor.submit(self._run, fn, args).result()

    def _run(self, fn: Callable[..., Any], args: tuple) -> Any:
        _use_threads(self.threads)
        return fn(*args)


_workers: dict[int, _Workers] = {}
_workers_lock = threading.Lock()


def _workers_for(threads: int) -> _Workers:
    with _workers_lock:
        if threads not in _workers:
            _workers[threads] = _Workers(threads)
        return _workers[threads]


def call_with_threads(threads: int, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) computing on `threads` torch intra-op threads: on the process's threads kept for
    that count when more than one, else on the calling thread."""
    if threads > 1:
        return _workers_for(threads).call(fn, *args)
    _use_threads(1)
    return fn(*args)


def _apply_interop(inter: int) -> tuple[int]:
    try:
        torch.set_num_interop_threads(inter)
    except RuntimeError:  # the pool already started (torch was used before): keep it
        inter = torch.get_num_interop_threads()
    return (inter,)


_interop = ProcessThreads("torch", "TorchScript model", _apply_interop, ("inter-op",))


# -- binding ------------------------------------------------------------------------------
def _is_string_list(type_: Any) -> bool:
    """Whether a TorchScript type is List[str]."""
    return type_.kind() == "ListType" and type_.getElementType().kind() == "StringType"


def _input_binding(config: mc.ModelConfig, module: torch.jit.ScriptModule) -> tuple[list[str], bool]:
    """Config input names in forward()'s argument order; True when forward() takes one Dict[str, Tensor]."""
    args = _arguments(module)
    names = [t.name for t in config.input]
    strings = {t.name for t in config.input if t.data_type == mc.TYPE_STRING}
    if len(args) == 1 and args[0].type.kind() == "DictType":
        if strings:
            raise invalid(
                f"unable to load model '{config.name}': forward() takes a Dict[str, Tensor], which cannot hold"
                f" the string input(s) {sorted(strings)}; string inputs are List[str] arguments"
            )
        return names, True
    for arg in args:
        if arg.type.kind() not in ("TensorType", "OptionalType") and not _is_string_list(arg.type):
            raise invalid(
                f"unable to load model '{config.name}': forward() argument '{arg.name}' has type {arg.type};"
                " only Tensor arguments, List[str] arguments (TYPE_STRING inputs) or a single"
                " Dict[str, Tensor] are supported"
            )
    if len(args) != len(names):
        raise invalid(
            f"unable to load model '{config.name}', configuration expects {len(names)} inputs, model provides"
            f" {len(args)}: {_signature_text(module)}"
        )
    arg_names = [a.name for a in args]
    if all(name in arg_names for name in names):
        order = {name: arg_names.index(name) for name in names}
    elif all(_NAMED_INDEX.search(name) for name in names):
        order = {name: int(_NAMED_INDEX.search(name).group(1)) for name in names}
    else:
        log.warning(
            "model '%s': inputs %s are neither forward() argument names %s nor <name>__<index>;"
            " binding them in configuration order", config.name, names, arg_names,
        )
        order = {name: i for i, name in enumerate(names)}
    if sorted(order.values()) != list(range(len(names))):
        raise invalid(
            f"unable to load model '{config.name}': input indices {sorted(order.values())} from the names"
            f" {names} do not cover forward()'s {len(names)} argument(s) once each"
        )
    for name, index in order.items():
        if (name in strings) != _is_string_list(args[index].type):
            raise invalid(
                f"unable to load model '{config.name}': input '{name}' is"
                f" {'TYPE_STRING' if name in strings else mc.DataType.Name(_config_input(config, name).data_type)}"
                f" in the configuration but forward() argument '{args[index].name}' has type {args[index].type};"
                " a TYPE_STRING input binds to a List[str] argument, every other input to a Tensor"
            )
    return sorted(names, key=order.__getitem__), False


def _config_input(config: mc.ModelConfig, name: str) -> mc.ModelInput:
    return next(t for t in config.input if t.name == name)


def _check_string_dims(config: mc.ModelConfig, kind: str, tensor: mc.ModelInput | mc.ModelOutput) -> None:
    """A List[str] is one-dimensional: with the batch dimension counted, a string tensor has at most one."""
    dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
    if len(dims) + (1 if config.max_batch_size > 0 else 0) > 1:
        raise invalid(
            f"Triton only supports 1 dimensional List of String as {kind} for '{tensor.name}' for model"
            f" '{config.name}'"
        )


def _text_list(name: str, array: np.ndarray) -> list[str]:
    """A BYTES tensor as the List[str] a TorchScript model takes."""
    items = []
    for i, item in enumerate(array.ravel()):
        if isinstance(item, str):
            items.append(item)
            continue
        try:
            items.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise invalid(
                f"input '{name}': element {i} is not UTF-8 text ({e.reason} at byte {e.start});"
                " TorchScript List[str] inputs take UTF-8 text only"
            ) from None
    return items


def _output_indices(config: mc.ModelConfig) -> dict[str, int]:
    names = [t.name for t in config.output]
    if all(_NAMED_INDEX.search(name) for name in names):
        return {name: int(_NAMED_INDEX.search(name).group(1)) for name in names}
    return {name: i for i, name in enumerate(names)}


def _short(error: Exception) -> str:
    """The error without TorchScript's interpreter traceback (its last line is the actual error)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1].strip() if any("Traceback" in line for line in lines) else " ".join(lines)


def _results(value: Any, single_list: bool = False) -> list[torch.Tensor | list[str]]:
    """forward()'s result as a list of outputs: a Tensor, or a tuple/list of them; each output a
    Tensor or a List[str]. `single_list`: forward() returns one List[str] (one output)."""
    items = [value] if single_list else list(value) if isinstance(value, (tuple, list)) else [value]
    for i, item in enumerate(items):
        strings = isinstance(item, list) and all(isinstance(s, str) for s in item)
        if not isinstance(item, torch.Tensor) and not strings:
            raise internal(
                f"PyTorch model output {i} is a {type(item).__name__}; only Tensor and List[str] outputs are supported"
            )
    return items


class TorchModel:
    def __init__(self, config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> None:
        self.name = config.name
        self.device = _device(config, settings)
        _interop.request(config.name, count_parameter(config, "INTER_OP_THREAD_COUNT", 1))
        threads = count_parameter(config, "INTRA_OP_THREAD_COUNT", settings.threads)
        explicit = any(name.lower() == "intra_op_thread_count" for name in config.parameters)
        _use_threads(1)  # this thread only loads and warms up
        self.module = _open(model_file, self.device)
        self.batching = config.max_batch_size > 0
        self.input_order, self.dict_input = _input_binding(config, self.module)
        self.output_index = _output_indices(config)
        self.outputs = {t.name: t for t in config.output}
        for kind, tensors in (("input", config.input), ("output", config.output)):
            for t in tensors:
                if t.data_type == mc.TYPE_STRING:
                    _check_string_dims(config, kind, t)
                elif mc.DataType.Name(t.data_type) not in _TORCH_TYPES:
                    raise invalid(
                        f"unable to load model '{config.name}': unsupported datatype"
                        f" {mc.DataType.Name(t.data_type)} for '{t.name}' in the pytorch backend"
                    )
        self.string_inputs = {t.name for t in config.input if t.data_type == mc.TYPE_STRING}
        returns = self.module.forward.schema.returns
        self.single_list = len(returns) == 1 and _is_string_list(returns[0].type)
        cpu = self.device.type == "cpu"
        self.threads = threads if cpu else 1
        self.wide_threads = settings.wide_threads if cpu and not explicit and settings.wide_threads > threads else 0
        self._warm_up(config)

    def _warm_up(self, config: mc.ModelConfig) -> None:
        """Run zeros once when every input shape is known: checks the outputs against the config at
        load time (a mismatch makes the model unavailable, not every request fail) and lets the
        TorchScript profiling executor do its first, slow runs before real requests come."""
        zeros = _zeros(config)
        if zeros is None:
            return
        try:
            self.run(zeros, list(self.outputs))
            if self.wide_threads:  # and on every core, so its threads and buffers exist before traffic
                call_with_threads(self.wide_threads, self._run, zeros, list(self.outputs))
        except Exception as e:
            message = e.message if isinstance(e, ServerError) else _short(e)
            raise invalid(f"unable to load model '{config.name}': a test run on zeros failed: {message}") from None

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        threads = self.wide_threads if self.wide_threads and EXECUTION.alone else self.threads
        return call_with_threads(threads, self._run, inputs, outputs)

    def _run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        # Arrays from the wire are read-only; a model may write into its inputs, so those are copied.
        tensors = {
            name: _text_list(name, a) if name in self.string_inputs
            else torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device)
            for name, a in inputs.items()
        }
        batch = next(iter(inputs.values())).shape[0] if self.batching and inputs else None
        try:
            with torch.inference_mode():
                if self.dict_input:
                    value = self.module(tensors)
                else:
                    # An optional input the request leaves out is None (Optional[Tensor] in forward()).
                    value = self.module(*(tensors.get(name) for name in self.input_order))
        except Exception as e:  # TorchScript raises torch.jit.Error / RuntimeError with the model's message
            raise internal(f"PyTorch execute failure: {_short(e)}") from None
        results = _results(value, self.single_list)
        return {name: self._output(name, results, batch) for name in outputs}

    def _output(self, name: str, results: list[torch.Tensor | list[str]], batch: int | None) -> np.ndarray:
        index = self.output_index[name]
        if index >= len(results):
            raise internal(
                f"the output {name} in the model configuration refers to an output index which doesn't exist."
                f" This model has {len(results)} outputs"
            )
        tensor = results[index]
        spec = self.outputs[name]
        expected = mc.DataType.Name(spec.data_type)
        actual = "TYPE_STRING" if isinstance(tensor, list) else _CONFIG_TYPES.get(tensor.dtype, str(tensor.dtype))
        if actual != expected:
            provided = "a List[str] (TYPE_STRING)" if isinstance(tensor, list) else actual
            raise internal(f"configuration expects datatype {expected} for output '{name}', model provides {provided}")
        shape = [len(tensor)] if isinstance(tensor, list) else list(tensor.shape)
        dims = list(spec.reshape.shape) if spec.HasField("reshape") else list(spec.dims)
        if batch is not None:
            if not shape or shape[0] != batch:
                raise internal(
                    f"output '{name}' has shape {shape}; its first dimension should be the batch size {batch}"
                )
            shape = shape[1:]
        if not datatypes.dims_fit(shape, dims):
            raise internal(
                f"output '{name}' has shape {shape}{' after the batch dimension' if batch is not None else ''},"
                f" but the configuration says {dims}"
            )
        if isinstance(tensor, list):
            strings = np.empty(len(tensor), dtype=np.object_)
            strings[:] = [s.encode("utf-8") for s in tensor]
            return strings
        return tensor.detach().cpu().numpy()

    def close(self) -> None:
        del self.module


def load(config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> TorchModel:
    return TorchModel(config, model_file, settings)


# -- auto-complete ------------------------------------------------------------------------
def _zeros(config: mc.ModelConfig) -> dict[str, np.ndarray] | None:
    """A zero batch of one for every input, or None when a dim is variable (no safe size to pick)."""
    zeros = {}
    for t in config.input:
        dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        if any(d < 0 for d in dims) or mc.DataType.Name(t.data_type) not in _TORCH_TYPES:
            return None
        shape = ([1] if config.max_batch_size > 0 else []) + dims
        zeros[t.name] = np.zeros(shape, datatypes.numpy_of_config(t.data_type))
    return zeros


def autocomplete(config: mc.ModelConfig, model_file: Path) -> None:
    _use_threads(1)
    module = _open(model_file, torch.device("cpu"))
    if not config.input:
        raise invalid(
            f"auto-complete of model '{config.name}' is not supported for the pytorch backend: TorchScript"
            " records no input datatypes or shapes. Write a config.pbtxt listing the inputs (name, data_type,"
            f" dims, max_batch_size); the model is {_signature_text(module)}, so name the inputs after those"
            " arguments (or input__0, input__1, ... by position); outputs may then be left out"
        )
    if config.output:
        return
    zeros = _zeros(config)
    if zeros is None:
        raise invalid(
            f"model '{config.name}' lists no outputs and they cannot be auto-completed: an input has a"
            " variable dimension or is a string, so no test run is possible; list the outputs in config.pbtxt"
        )
    names, dict_input = _input_binding(config, module)
    tensors = {name: torch.from_numpy(array) for name, array in zeros.items()}
    try:
        with torch.inference_mode():
            value = module(tensors) if dict_input else module(*(tensors[n] for n in names))
        results = _results(value)
    except Exception as e:
        raise invalid(
            f"model '{config.name}' lists no outputs and a test run on zeros to find them failed: {_short(e)}"
        ) from None
    skip = 1 if config.max_batch_size > 0 else 0
    for i, tensor in enumerate(results):
        data_type = _CONFIG_TYPES.get(tensor.dtype)
        if data_type is None:
            raise invalid(f"model '{config.name}': output {i} has datatype {tensor.dtype}, not supported")
        config.output.add(name=f"output__{i}", data_type=data_type, dims=list(tensor.shape)[skip:])
    log.info("model '%s': outputs auto-completed from a test run: %s", config.name,
             [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in config.output])
