"""TensorFlow SavedModel backend (`platform: "tensorflow_savedmodel"`).

The model file is the SavedModel folder (`model.savedmodel/`; a version folder holding
saved_model.pb itself, TF Serving's layout, works too). It runs one signature: `serving_default`,
or the one config `parameters` `signature_name` names. Config tensor names may be the signature's
keys (`input_1`) or its tensor names (`serving_default_input_1:0`). Inputs, outputs and batching
missing from the config are completed from the signature (a dynamic first dimension everywhere
means batching, max_batch_size 4 and the dynamic batcher, as for ONNX).

Threads: TensorFlow's pools are process-wide and fixed once it starts, so the first SavedModel
loaded sets them: intra-op = the instance's share of the cores and inter-op = all cores (two
single-threaded instances on two cores measured fastest, about 116 against 93-107 images/s for
MobileNetV2), unless config `parameters` intra_op_thread_count / inter_op_thread_count say
otherwise. The instances of a model version share one loaded SavedModel (TF functions can be
called from several threads at once, and TF releases the GIL while it computes).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TF's C++ INFO lines (oneDNN notes, ...) are noise here

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from triserve import datatypes  # noqa: E402
from triserve.backends import InstanceSettings, ProcessThreads, check_dims, count_parameter, cpu_count  # noqa: E402
from triserve.errors import internal, invalid  # noqa: E402

log = logging.getLogger("triserve")

BACKEND = "tensorflow"
DEFAULT_FILENAME = "model.savedmodel"
DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config default-max-batch-size
DEFAULT_SIGNATURE = "serving_default"


# -- the SavedModel on disk ---------------------------------------------------------------
def _folder(model_file: Path) -> Path:
    if (model_file / "saved_model.pb").is_file():
        return model_file
    if not model_file.exists() and (model_file.parent / "saved_model.pb").is_file():
        return model_file.parent  # TF Serving layout: <version>/saved_model.pb
    raise invalid(f"SavedModel {model_file} not found (a folder holding saved_model.pb)")


def _signature_name(config: mc.ModelConfig) -> str:
    for key, value in config.parameters.items():
        if key.lower() == "signature_name" and value.string_value:
            return value.string_value
    return DEFAULT_SIGNATURE


def _read_signature(config: mc.ModelConfig, folder: Path) -> meta_graph_pb2.SignatureDef:
    """The signature from saved_model.pb alone (no TF runtime needed)."""
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((folder / "saved_model.pb").read_bytes())
    except (DecodeError, OSError) as e:
        raise invalid(f"could not read SavedModel {folder}: saved_model.pb is not a SavedModel ({e})") from None
    if not saved.meta_graphs:
        raise invalid(f"could not read SavedModel {folder}: saved_model.pb holds no MetaGraph")
    serving = [m for m in saved.meta_graphs if "serve" in m.meta_info_def.tags]
    meta = (serving or list(saved.meta_graphs))[0]
    name = _signature_name(config)
    if name not in meta.signature_def:
        available = sorted(k for k in meta.signature_def if not k.startswith("__"))
        raise invalid(
            f"unable to load model '{config.name}': SavedModel {folder} has no signature '{name}';"
            f" it has {available} (choose one with config parameters signature_name)"
        )
    return meta.signature_def[name]


def _config_type(info: meta_graph_pb2.TensorInfo) -> str:
    try:
        dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype
        return datatypes.to_config(datatypes.from_numpy(dtype))
    except (TypeError, KeyError):
        return "TYPE_INVALID"


def _dims(info: meta_graph_pb2.TensorInfo) -> list[int] | None:
    """The signature's shape with -1 for unknown dims; None for unknown rank."""
    if info.tensor_shape.unknown_rank:
        return None
    return [d.size if d.size >= 0 else -1 for d in info.tensor_shape.dim]


def _keys(config: mc.ModelConfig, kind: str, declared, infos) -> dict[str, str]:
    """Config tensor name -> signature key; a name may be the key or the tensor name."""
    by_tensor = {info.name: key for key, info in infos.items()}
    by_tensor.update({info.name.removesuffix(":0"): key for key, info in infos.items()})
    keys = {}
    for tensor in declared:
        key = tensor.name if tensor.name in infos else by_tensor.get(tensor.name)
        if key is None:
            raise invalid(
                f"unable to load model '{config.name}': configuration {kind} '{tensor.name}' is not in the"
                f" signature '{_signature_name(config)}'; it has {sorted(infos)}"
                f" (tensor names {sorted(i.name for i in infos.values())})"
            )
        keys[tensor.name] = key
    return keys


def _check(config: mc.ModelConfig, signature: meta_graph_pb2.SignatureDef) -> tuple[dict[str, str], dict[str, str]]:
    """Names, datatypes and dims in the config must fit the signature; returns the name -> key maps."""
    input_keys = _keys(config, "input", config.input, signature.inputs)
    output_keys = _keys(config, "output", config.output, signature.outputs)
    missing = sorted(set(signature.inputs) - set(input_keys.values()))
    if missing:
        raise invalid(
            f"unable to load model '{config.name}': the signature '{_signature_name(config)}' needs input(s)"
            f" {missing} that the configuration does not list"
        )
    for kind, declared, keys, infos in (
        ("input", config.input, input_keys, signature.inputs),
        ("output", config.output, output_keys, signature.outputs),
    ):
        for tensor in declared:
            info = infos[keys[tensor.name]]
            expected, given = _config_type(info), mc.DataType.Name(tensor.data_type)
            if expected != given:
                raise invalid(
                    f"unable to load model '{config.name}': {kind} '{tensor.name}' has datatype {expected}"
                    f" in the model but {given} in the configuration"
                )
            model_dims = _dims(info)
            if model_dims is None:
                continue
            check_dims(config, kind, tensor, model_dims)
    return input_keys, output_keys


def autocomplete(config: mc.ModelConfig, model_file: Path) -> None:
    signature = _read_signature(config, _folder(model_file))
    infos = [*signature.inputs.values(), *signature.outputs.values()]
    all_dims = [_dims(i) for i in infos]
    batching = bool(infos) and all(d and d[0] == -1 for d in all_dims)
    if config.max_batch_size == 0 and not config.input and not config.output and batching:
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
    skip = 1 if config.max_batch_size > 0 else 0
    for declared, infos_by_key in ((config.input, signature.inputs), (config.output, signature.outputs)):
        if declared:
            continue
        for key in sorted(infos_by_key):
            info = infos_by_key[key]
            dims = _dims(info)
            # Unknown rank: nothing to say; the config check below reports the missing dims.
            declared.add(name=key, data_type=_config_type(info), dims=(dims or [])[skip:])
    if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
        config.dynamic_batching.SetInParent()


# -- threads ------------------------------------------------------------------------------
def _apply_threads(intra: int, inter: int) -> tuple[int, int]:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TensorFlow already started in this process: its pools are fixed
        intra = tf.config.threading.get_intra_op_parallelism_threads()
        inter = tf.config.threading.get_inter_op_parallelism_threads()
    return intra, inter


_threads = ProcessThreads("tensorflow", "SavedModel", _apply_threads)


def _set_threads(config: mc.ModelConfig, settings: InstanceSettings) -> None:
    """Call before TensorFlow's runtime starts (the first SavedModel load starts it)."""
    intra = count_parameter(config, "intra_op_thread_count", settings.threads)
    inter = count_parameter(config, "inter_op_thread_count", cpu_count())
    _threads.request(config.name, intra, inter)


# -- loaded SavedModels, shared by the instances of a version ------------------------------
class _Loaded:
    def __init__(self, folder: Path, signature_name: str, device: str) -> None:
        with tf.device(device):
            self.root = tf.saved_model.load(str(folder))  # keeps the variables alive
        self.function = self.root.signatures[signature_name]
        self.users = 0


_Key = tuple[str, str, str, tuple]
_loaded: dict[_Key, _Loaded] = {}
_lock = threading.Lock()  # guards _loaded; held while a SavedModel loads


def _fingerprint(folder: Path) -> tuple:
    """Changes when the files do, so a reload after an edit loads afresh instead of sharing the old one."""
    files = [folder / "saved_model.pb", folder / "variables" / "variables.index"]
    return tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists())


def _acquire(config: mc.ModelConfig, folder: Path, settings: InstanceSettings) -> tuple[_Key, _Loaded]:
    device = _device(config, settings)
    key = (str(folder.resolve()), _signature_name(config), device, _fingerprint(folder))
    with _lock:
        _set_threads(config, settings)
        entry = _loaded.get(key)
        if entry is None:
            try:
                entry = _Loaded(folder, key[1], device)
            except Exception as e:  # TF raises its own errors for broken variables or graphs
                first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise invalid(f"tensorflow could not load SavedModel {folder}: {first_line}") from None
            _loaded[key] = entry
        entry.users += 1
    return key, entry


def _release(key: _Key) -> None:
    with _lock:
        entry = _loaded.get(key)
        if entry is not None:
            entry.users -= 1
            if entry.users <= 0:
                del _loaded[key]


def _device(config: mc.ModelConfig, settings: InstanceSettings) -> str:
    if not settings.device.startswith("cuda"):
        return "/CPU:0"
    gpu = int(settings.device.partition(":")[2] or 0)
    gpus = tf.config.list_physical_devices("GPU")
    if gpu >= len(gpus):
        raise invalid(
            f"model '{config.name}' asks for KIND_GPU ({settings.device}) but TensorFlow sees"
            f" {len(gpus)} GPU(s) (tensorflow-cpu has none); use KIND_CPU"
        )
    return f"/GPU:{gpu}"


class SavedModel:
    def __init__(self, config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> None:
        folder = _folder(model_file)
        signature = _read_signature(config, folder)
        self.input_keys, self.output_keys = _check(config, signature)
        self._key, loaded = _acquire(config, folder, settings)
        self.function = loaded.function

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        feed = {self.input_keys[name]: tf.constant(array) for name, array in inputs.items()}
        try:
            result: dict[str, Any] = self.function(**feed)
        except tf.errors.InvalidArgumentError as e:  # the values are wrong (as TF Serving: 400)
            raise invalid(f"tensorflow refused the input: {_cause(e.message)}") from None
        except Exception as e:  # TF's other OpErrors, TypeError (missing inputs), ...
            message = (e.message if isinstance(e, tf.errors.OpError) else str(e)).strip() or type(e).__name__
            raise internal(f"tensorflow failed: {_cause(message)}") from None
        return {name: result[self.output_keys[name]].numpy() for name in outputs}

    def close(self) -> None:
        self.function = None
        _release(self._key)


def _cause(message: str) -> str:
    """The line of a TensorFlow error that says what went wrong: a tf.function error starts with
    "Graph execution error:" and a traceback of graph nodes before the cause."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "Node:", "[[", "Detected at node", "Graph execution error", "Stack trace")) and ":" in line:
            return line.split("[[", 1)[0].strip()
    return lines[0] if lines else "unknown error"


def load(config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> SavedModel:
    return SavedModel(config, model_file, settings)
