"""TensorFlow SavedModel backend (`platform: "tensorflow_savedmodel"`).

The model file is the SavedModel folder (`model.savedmodel/`; a version folder holding
saved_model.pb itself, TF Serving's layout, works too). TF1 and TF2 SavedModels load as TF Serving
loads them: the MetaGraph tagged `serve` is imported into a graph and run by a session, feeding and
fetching the graph tensors a signature names. So an input of unknown rank or dims takes any shape
TensorFlow's kernels take (TF Serving checks no shapes either: `[3]` for a declared `[-1,1]` runs).

The model's config (the v2 protocol's view) is one signature: `serving_default`, or the one
config `parameters` `signature_name` names. Config tensor names may be the signature's keys
(`input_1`) or its tensor names (`serving_default_input_1:0`). Inputs, outputs and batching
missing from the config are completed from the signature (a dynamic first dimension everywhere
means batching, max_batch_size 4 and the dynamic batcher, as for ONNX); an input of unknown rank
is completed as dims [-1] (without batching), a scalar as dims [1] reshaped to [].
Every signature of the MetaGraph is also exposed (`signatures`, `run(..., signature=name)`),
keyed as the signature keys them, for the TF Serving API's `signature_name`.

Threads: TensorFlow's pools are process-wide and fixed once it starts, so the first SavedModel
loaded sets them: intra-op = the instance's share of the cores and inter-op = all cores (two
single-threaded instances on two cores measured fastest, about 116 against 93-107 images/s for
MobileNetV2), unless config `parameters` intra_op_thread_count / inter_op_thread_count say
otherwise. The instances of a model version share one loaded SavedModel (a TF session may be run
from several threads at once, and TF releases the GIL while it computes).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TF's C++ INFO lines (oneDNN notes, ...) are noise here

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2  # noqa: E402
from tensorflow.python.util import deprecation  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from triserve import datatypes  # noqa: E402
from triserve.backends import InstanceSettings, ProcessThreads, check_dims, count_parameter, cpu_count  # noqa: E402
from triserve.errors import internal, invalid  # noqa: E402
from triserve.signatures import Signature, TensorInfo  # noqa: E402

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


def _meta_graph(folder: Path) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraph TF Serving serves (tagged `serve`; else the first), from saved_model.pb alone."""
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((folder / "saved_model.pb").read_bytes())
    except (DecodeError, OSError) as e:
        raise invalid(f"could not read SavedModel {folder}: saved_model.pb is not a SavedModel ({e})") from None
    if not saved.meta_graphs:
        raise invalid(f"could not read SavedModel {folder}: saved_model.pb holds no MetaGraph")
    serving = [m for m in saved.meta_graphs if "serve" in m.meta_info_def.tags]
    return (serving or list(saved.meta_graphs))[0]


def _read_signature(config: mc.ModelConfig, folder: Path) -> meta_graph_pb2.SignatureDef:
    """The config's signature from saved_model.pb alone (no TF runtime needed)."""
    meta = _meta_graph(folder)
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
    """The signature's shape with -1 for unknown dims; None for unknown rank (also when the
    signature has no shape at all, as early TF1 exports wrote them)."""
    if info.tensor_shape.unknown_rank or not info.HasField("tensor_shape"):
        return None
    return [d.size if d.size >= 0 else -1 for d in info.tensor_shape.dim]


def signatures(meta: meta_graph_pb2.MetaGraphDef) -> dict[str, Signature]:
    """Every signature of the MetaGraph, as TF Serving lists them (TF2's `__saved_model_init_op` too)."""

    def infos(tensors) -> dict[str, TensorInfo]:
        result = {}
        for key, info in tensors.items():
            dims = _dims(info)
            result[key] = TensorInfo(info.name, info.dtype, None if dims is None else tuple(dims))
        return result

    return {
        name: Signature(signature.method_name, infos(signature.inputs), infos(signature.outputs))
        for name, signature in meta.signature_def.items()
    }


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
            if model_dims is None:  # unknown rank: any shape goes, as in TF Serving
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
            if dims is None:  # unknown rank: one dim of any size (the TF Serving API checks none)
                declared.add(name=key, data_type=_config_type(info), dims=[-1])
            elif not dims[skip:]:  # a scalar: Triton's dims [1], reshaped to [] for the model
                tensor = declared.add(name=key, data_type=_config_type(info), dims=[1])
                tensor.reshape.SetInParent()
            else:
                declared.add(name=key, data_type=_config_type(info), dims=dims[skip:])
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
    """The MetaGraph imported into its own graph and session, as TF Serving's SavedModelBundle."""

    def __init__(self, folder: Path, device: str) -> None:
        meta = _meta_graph(folder)
        intra, inter = _threads.counts or (0, 0)
        session_config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=intra, inter_op_parallelism_threads=inter, allow_soft_placement=True
        )
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=session_config)
        try:
            with self.graph.as_default(), self.graph.device(device), deprecation.silence():
                tf.compat.v1.saved_model.loader.load(
                    self.session, list(meta.meta_info_def.tags), str(folder), clear_devices=True
                )
        except BaseException:
            self.session.close()
            raise
        self.signatures = signatures(meta)
        self._callables: OrderedDict[tuple[tuple[str, ...], tuple[str, ...]], Any] = OrderedDict()
        self._callables_lock = threading.Lock()
        self.users = 0

    def callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]):
        """A session callable feeding and fetching these graph tensors (made once, then reused;
        the most recently used _MAX_CALLABLES are kept, as output filters may pick any subset)."""
        key = (feeds, fetches)
        with self._callables_lock:
            found = self._callables.get(key)
            if found is not None:
                self._callables.move_to_end(key)
            else:
                # Session::MakeCallable, as TF Serving runs a session: TensorFlow's Python
                # wrappers would refuse shapes the graph's static shapes do not show, which
                # TF Serving feeds (shape [3] for an input declared [-1,1]).
                options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
                try:
                    found = self.session._make_callable_from_options(options)
                except tf.errors.OpError as e:  # a tensor the graph does not have
                    raise invalid(f"tensorflow cannot run the signature: {_cause(e.message)}") from None
                self._callables[key] = found
                while len(self._callables) > _MAX_CALLABLES:
                    self._callables.popitem(last=False)  # released once no run holds it
        return found

    def close(self) -> None:
        self._callables.clear()
        self.session.close()


_MAX_CALLABLES = 64
_Key = tuple[str, str, tuple]
_loaded: dict[_Key, _Loaded] = {}
_lock = threading.Lock()  # guards _loaded; held while a SavedModel loads


def _fingerprint(folder: Path) -> tuple:
    """Changes when the files do, so a reload after an edit loads afresh instead of sharing the old one."""
    files = [folder / "saved_model.pb", folder / "variables" / "variables.index"]
    return tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists())


def _acquire(config: mc.ModelConfig, folder: Path, settings: InstanceSettings) -> tuple[_Key, _Loaded]:
    device = _device(config, settings)
    key = (str(folder.resolve()), device, _fingerprint(folder))
    with _lock:
        _set_threads(config, settings)
        entry = _loaded.get(key)
        if entry is None:
            try:
                entry = _Loaded(folder, device)
            except Exception as e:  # TF raises its own errors for broken variables or graphs
                message = e.message if isinstance(e, tf.errors.OpError) else str(e)
                first_line = (message.strip().splitlines() or [type(e).__name__])[0]
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
                entry.close()


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
        self._config_signature = _signature_name(config)
        self._key, self._loaded = _acquire(config, folder, settings)
        self.signatures: dict[str, Signature] = self._loaded.signatures

    def run(
        self, inputs: dict[str, np.ndarray], outputs: list[str], signature: str | None = None
    ) -> dict[str, np.ndarray]:
        """Run the config's signature (config tensor names), or with `signature` the one of that
        name (its own keys)."""
        if signature is None:
            chosen = self.signatures[self._config_signature]
            feeds = {chosen.inputs[self.input_keys[name]].tensor: array for name, array in inputs.items()}
            fetches = [chosen.outputs[self.output_keys[name]].tensor for name in outputs]
        else:
            chosen = self.signatures.get(signature)
            if chosen is None:
                raise invalid(f'Serving signature key "{signature}" not found.')
            unknown = [k for k in [*inputs] if k not in chosen.inputs] + [k for k in outputs if k not in chosen.outputs]
            if unknown:
                raise invalid(f"signature '{signature}' has no tensor '{unknown[0]}'")
            feeds = {chosen.inputs[key].tensor: array for key, array in inputs.items()}
            fetches = [chosen.outputs[key].tensor for key in outputs]
        unique = tuple(dict.fromkeys(fetches))  # two keys may name one tensor: fetched once
        run = self._loaded.callable(tuple(feeds), unique)
        try:
            values = dict(zip(unique, run(*feeds.values())))
        except tf.errors.InvalidArgumentError as e:  # the values are wrong (as TF Serving: 400)
            raise invalid(f"tensorflow refused the input: {_cause(e.message)}") from None
        except Exception as e:  # TF's other OpErrors, TypeError (an input it cannot convert), ...
            message = (e.message if isinstance(e, tf.errors.OpError) else str(e)).strip() or type(e).__name__
            if isinstance(e, (TypeError, ValueError)):
                raise invalid(f"tensorflow refused the input: {_cause(message)}") from None
            raise internal(f"tensorflow failed: {_cause(message)}") from None
        return {name: np.asarray(values[tensor]) for name, tensor in zip(outputs, fetches)}

    def close(self) -> None:
        self.signatures = {}
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
