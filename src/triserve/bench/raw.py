"""Raw in-process inference: each framework called directly, threads configured as the server does.

Frameworks are imported only when a model of theirs is measured.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from triserve.bench.results import MIN_COMPLETED, Result, result

Runner = Callable[[np.ndarray], np.ndarray]  # one input batch -> the model's first output

FRAMEWORKS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "torch.jit",
    "tensorflow_savedmodel": "TF SavedModel",
    "openvino": "OpenVINO",
}


def _onnx_runners(model_file: Path, count: int, threads: int) -> list[Runner]:
    import onnxruntime as ort

    def runner() -> Runner:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]

    return [runner() for _ in range(count)]


def _torch_runners(model_file: Path, count: int, threads: int) -> list[Runner]:
    import torch

    with contextlib.suppress(RuntimeError):  # process-wide, and only before first use
        torch.set_num_interop_threads(1)
    torch.set_num_threads(1)  # loading on this thread: no OpenMP team is left behind here

    def runner() -> Runner:
        module = torch.jit.load(str(model_file), map_location="cpu").eval()

        def run(x: np.ndarray) -> np.ndarray:
            if torch.get_num_threads() != threads:  # each calling thread has its own count
                torch.set_num_threads(threads)
            with torch.inference_mode():
                out = module(torch.from_numpy(x))
            return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

        return run

    return [runner() for _ in range(count)]  # one module per instance, as the server loads them


def _tf_runners(model_file: Path, count: int, threads: int) -> list[Runner]:
    import tensorflow as tf

    from triserve.backends import cpu_count

    with contextlib.suppress(RuntimeError):  # process-wide, fixed once TensorFlow has started
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(cpu_count())  # as the server's backend
    root = tf.saved_model.load(str(model_file))  # a signature needs its root alive (the variables)
    key = next(iter(root.signatures["serving_default"].structured_input_signature[1]))

    def run(x: np.ndarray) -> np.ndarray:
        outputs = root.signatures["serving_default"](**{key: tf.constant(x)})
        return next(iter(outputs.values())).numpy()

    return [run] * count  # the server's instances share one loaded SavedModel too


def _openvino_runners(model_file: Path, count: int, threads: int) -> list[Runner]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_file))
    # As the server's backend compiles each instance: one stream, `threads` threads, f32 math, not pinned.
    properties = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32",
                  "ENABLE_CPU_PINNING": "NO"}

    def runner() -> Runner:
        request = core.compile_model(model, "CPU", properties).create_infer_request()
        return lambda x: request.infer({0: x})[0]

    return [runner() for _ in range(count)]


_OPENERS = {"onnxruntime_onnx": _onnx_runners, "pytorch_libtorch": _torch_runners, "tensorflow_savedmodel": _tf_runners,
            "openvino": _openvino_runners}


def open_runners(platform: str, model_file: Path, count: int, threads: int) -> list[Runner]:
    """`count` instances of a model in this process, each computing with `threads` intra-op threads."""
    if platform not in _OPENERS:
        raise RuntimeError(f"no raw in-process runner for platform '{platform}' (only {', '.join(_OPENERS)})")
    return _OPENERS[platform](model_file, count, threads)


def measure_raw(label: str, calls: list[Callable[[], Any]], images_per_call: int, seconds: float) -> Result:
    """Each call in its own thread, back to back, for `seconds` and until MIN_COMPLETED calls
    completed (after a few warm-up calls on the same thread: torch keeps its thread counts, and
    OpenMP its worker teams, per calling thread)."""
    latencies: list[list[float]] = [[] for _ in calls]
    window: dict[str, float] = {}

    def begin() -> None:  # once every thread has warmed up
        window["start"] = time.perf_counter()
        window["stop"] = window["start"] + seconds

    warmed = threading.Barrier(len(calls), action=begin)

    failures: list[BaseException] = []
    warming = threading.Lock()  # one thread at a time: first calls from two threads at once can
    # deadlock a framework's Python binding (OpenVINO's, initialising its numpy bridge)

    def loop(call: Callable[[], Any], out: list[float]) -> None:
        try:
            with warming:
                for _ in range(3):  # the first runs compile and profile (TorchScript, TF functions)
                    call()
            warmed.wait()
            while (t := time.perf_counter()) < window["stop"] or sum(map(len, latencies)) < MIN_COMPLETED:
                call()
                out.append(time.perf_counter() - t)
        except threading.BrokenBarrierError:  # another call failed
            pass
        except BaseException as e:
            failures.append(e)
            warmed.abort()

    workers = [threading.Thread(target=loop, args=pair) for pair in zip(calls, latencies)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        raise failures[0]
    return result(label, [v for per in latencies for v in per], time.perf_counter() - window["start"], images_per_call)
