"""`triton_python_backend_utils` as a Python model (`model.py`) imports it, written for triserve
from the interface Triton's Python backend documents.

It is importable only inside a model's stub process (core/backends/python/stub.py registers
it under its Triton name); there, `InferenceRequest.exec()` / `async_exec()` send a request to
the server (BLS), which runs it on any loaded model through the core.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Any

import numpy as np

TRITON_STRING_TO_NUMPY = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

# TRITONSERVER_DataType numbers, in Triton's order (1 is BOOL ... 13 is BYTES)
_TRITON_TYPES = [np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32,
                 np.int64, np.float16, np.float32, np.float64, np.object_]

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

# Set by the stub process: what sends BLS requests and decoupled responses to the server.
_bridge: Any = None


def triton_to_numpy_type(data_type: int):
    if 1 <= data_type <= len(_TRITON_TYPES):
        return _TRITON_TYPES[data_type - 1]
    return None


def numpy_to_triton_type(data_type) -> int | None:
    dtype = np.dtype(data_type)
    if dtype.kind in "OSU":
        return 13
    for number, candidate in enumerate(_TRITON_TYPES, start=1):
        if candidate is not np.object_ and dtype == np.dtype(candidate):
            return number
    return None


def triton_string_to_numpy(triton_type_string: str):
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def serialize_byte_tensor(input_tensor: np.ndarray):
    """An object (or bytes) array as Triton's BYTES wire form: 4-byte little-endian length, then bytes, per element."""
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype.kind not in "OS":
        raise ValueError("cannot serialize bytes tensor: invalid datatype")
    parts = []
    for item in input_tensor.reshape(-1, order="C"):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, bytes):
            item = str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(item)) + item)
    return np.frombuffer(b"".join(parts), dtype=np.uint8)  # the bytes, as Triton's client helper gives them


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """Triton's BYTES wire form back to a 1-D object array of bytes."""
    items = []
    pos = 0
    data = bytes(encoded_tensor)
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 4
        items.append(data[pos:pos + length])
        pos += length
    return np.array(items, dtype=np.object_)


# -- errors -------------------------------------------------------------------------------
class TritonError:
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = str(message)
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r})"


class TritonModelException(Exception):
    """What a model raises to fail its requests (and what BLS raises for a call it cannot make)."""

    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- tensors --------------------------------------------------------------------------------
class Tensor:
    def __init__(self, name: str, data: Any, dtype: Any = None) -> None:
        array = np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
        if array.dtype.kind == "U":
            array = np.array([s.encode("utf-8") for s in array.reshape(-1)], dtype=np.object_).reshape(array.shape)
        elif array.dtype.kind == "S":
            array = array.astype(np.object_)
        if not isinstance(name, str):
            raise TypeError("Tensor name must be a string")
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._array.dtype)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self):
        if self._array.dtype == np.object_:
            raise TritonModelException("BYTES tensors cannot be shared through DLPack")
        return self._array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        if hasattr(capsule, "__dlpack__"):
            return Tensor(name, np.from_dlpack(capsule))
        try:  # a raw capsule (torch.utils.dlpack.to_dlpack): torch reads it back
            import torch.utils.dlpack

            return Tensor(name, torch.utils.dlpack.from_dlpack(capsule).cpu().numpy())
        except ImportError:
            raise TritonModelException("from_dlpack needs an object with __dlpack__") from None

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


# -- requests and responses ----------------------------------------------------------------
class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None,
                 parameters: dict | str | None = None) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error
        if isinstance(parameters, str):
            parameters = json.loads(parameters) if parameters else {}
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return list(self._outputs)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class InferenceResponseSender:
    """Decoupled models' way to answer: any number of responses, then the final flag."""

    def __init__(self, request_key: Any) -> None:
        self._key = request_key
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if response is None and not flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException("a response sender needs a response or the final flag")
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True
        _bridge.send_response(self._key, response, flags)

    def is_cancelled(self) -> bool:
        return False


class InferenceRequest:
    """A request as `execute` receives it, and one a model makes to another model (BLS)."""

    def __init__(
        self,
        model_name: str | bytes = "",
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
        model_version: int = -1,
        flags: int = 0,
        correlation_id: int | str = 0,
        request_id: str = "",
        timeout: int = 0,
        preferred_memory: Any = None,
        trace: Any = None,
        parameters: dict | str | None = None,
    ) -> None:
        if isinstance(model_name, bytes):
            model_name = model_name.decode("utf-8", "replace")
        self._model_name = str(model_name)
        self._inputs = list(inputs or [])
        self._requested = [n.decode() if isinstance(n, bytes) else str(n) for n in requested_output_names or []]
        self._model_version = int(model_version)
        self._flags = flags
        self._correlation_id = correlation_id
        self._request_id = request_id
        self._timeout = int(timeout)
        if isinstance(parameters, str):
            parameters = json.loads(parameters) if parameters else {}
        self._parameters = dict(parameters or {})
        self._sender_key: Any = None  # set by the stub on requests execute receives (decoupled models)

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        return False

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender_key is None:
            raise TritonModelException("only a decoupled model's requests have a response sender")
        return InferenceResponseSender(self._sender_key)

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Run this request on the model it names; errors come back in the response."""
        if _bridge is None:
            raise TritonModelException("BLS requests can only be made from a model the server runs")
        if decoupled:
            raise TritonModelException("decoupled BLS requests are not supported by this server")
        return _bridge.infer(self)

    def async_exec(self, decoupled: bool = False):
        """Like exec(), but an awaitable (for `async def execute`)."""
        if _bridge is None:
            raise TritonModelException("BLS requests can only be made from a model the server runs")
        if decoupled:
            raise TritonModelException("decoupled BLS requests are not supported by this server")
        return _bridge.infer_async(self)


# -- lookups --------------------------------------------------------------------------------
def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    for item in model_config.get("input", []):
        if item.get("name") == name:
            return item
    return None


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    for item in model_config.get("output", []):
        if item.get("name") == name:
            return item
    return None


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


# -- auto-complete ------------------------------------------------------------------------
class ModelConfig:
    """The model's configuration as `auto_complete_config` sees and completes it."""

    def __init__(self, model_config: str | dict) -> None:
        self._model_config = json.loads(model_config) if isinstance(model_config, str) else dict(model_config)

    def as_dict(self) -> dict:
        return self._model_config

    def _name(self) -> str:
        return str(self._model_config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = int(self._model_config.get("max_batch_size", 0) or 0)
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in auto-complete-config function for"
                f" model '{self._name()}' specified max_batch_size {max_batch_size}"
            )
        self._model_config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._model_config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{other}', but auto-complete-config function"
                    f" for model '{self._name()}' tries to set scheduling_choice as 'dynamic_batching'"
                )
        self._model_config.setdefault("dynamic_batching", {})

    def _add(self, kind: str, tensor: dict, allowed: tuple[str, ...]) -> None:
        if "name" not in tensor:
            raise ValueError(f"{kind} in auto-complete-config function for model '{self._name()}' is missing 'name' property.")
        for key in tensor:
            if key not in allowed:
                raise ValueError(
                    f"{kind} '{tensor['name']}' in auto-complete-config function for model '{self._name()}' contains"
                    f" property other than {', '.join(repr(a) for a in allowed)}."
                )
        for key in ("data_type", "dims"):
            if key not in tensor:
                raise ValueError(
                    f"{kind} '{tensor['name']}' in auto-complete-config function for model '{self._name()}' is"
                    f" missing '{key}' property."
                )
        existing = self._model_config.setdefault(kind, [])
        for item in existing:
            if item.get("name") == tensor["name"]:
                for key in ("data_type", "dims"):
                    if key in item and _norm(item[key]) != _norm(tensor[key]):
                        raise ValueError(
                            f"unable to load model '{self._name()}', configuration expects {item[key]} for {key} of"
                            f" {kind} '{tensor['name']}', model provides {tensor[key]}"
                        )
                    item.setdefault(key, tensor[key])
                return
        existing.append(dict(tensor))

    def add_input(self, input: dict) -> None:  # noqa: A002 (Triton's parameter name)
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict) -> None:
        self._add("output", output, ("name", "data_type", "dims"))

    def set_model_transaction_policy(self, transaction_policy_dict: dict) -> None:
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(f"model transaction property '{key}' in auto-complete-config function for model"
                                 f" '{self._name()}' is not supported")
        self._model_config.setdefault("model_transaction_policy", {}).update(transaction_policy_dict)


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return value


# -- logging --------------------------------------------------------------------------------
class LogLevel:
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """Log lines from model.py, in the server's log (the stub's stderr is the server's)."""

    _NAMES = {LogLevel.INFO: "I", LogLevel.WARNING: "W", LogLevel.ERROR: "E", LogLevel.VERBOSE: "V"}

    @staticmethod
    def log(message: str, level: int = LogLevel.INFO) -> None:
        model = getattr(_bridge, "model_name", "")
        sys.stderr.write(f"{Logger._NAMES.get(level, 'I')} python model '{model}': {message}\n")
        sys.stderr.flush()

    @staticmethod
    def log_info(message: str) -> None:
        Logger.log(message, LogLevel.INFO)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger.log(message, LogLevel.WARNING)

    @staticmethod
    def log_error(message: str) -> None:
        Logger.log(message, LogLevel.ERROR)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger.log(message, LogLevel.VERBOSE)
