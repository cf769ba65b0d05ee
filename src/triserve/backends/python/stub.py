"""The stub process of one Python model instance: imports the model's `model.py`, runs
`TritonPythonModel` and answers the server over a pipe, tensors in shared memory (shm.py).

Messages (tuples) from the server: ("execute", id, Packed, requested names), ("bls_result",
id, "ok", Packed) or ("bls_result", id, "error", message, code), ("finalize",). To the server:
("ready",) or ("init_error", message) once; ("result", id, [("ok", Packed) | ("error",
message, code)]) or ("failed", id, message) per execute; ("bls", id, model, version, Packed,
requested, timeout_us) for a model's own requests to other models; ("response", id, item | None,
flags) for each response of a decoupled model (flags & 1: the last) and ("executed", id) when its
execute returned; ("finalized",).

Whatever model.py does — raise, hang, exit — happens here, never in the server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import itertools
import json
import os
import queue
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from triserve.backends.python import shm
from triserve.backends.python import triton_python_backend_utils as pb_utils

UTILS_MODULE = "triton_python_backend_utils"


def _import_model(model_file: str) -> Any:
    path = Path(model_file)
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_triserve_model_{os.getpid()}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path.name} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "TritonPythonModel"):
        raise AttributeError(f"{path.name} defines no class TritonPythonModel")
    return module.TritonPythonModel


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class Bridge:
    """The stub's side of the pipe; pb_utils calls it for BLS requests."""

    def __init__(self, conn: Any, model_name: str) -> None:
        self.conn = conn
        self.model_name = model_name
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, Any] = {}
        self._pending_lock = threading.Lock()
        self.work: queue.Queue = queue.Queue()

    def send(self, message: tuple) -> None:
        with self._send_lock:
            self.conn.send(message)

    # -- the reader thread ----------------------------------------------------------------
    def read_forever(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server went away: nothing is left to answer
            if message[0] == "bls_result":
                with self._pending_lock:
                    deliver = self._pending.pop(message[1], None)
                if deliver is not None:
                    deliver(message[2:])
            else:
                self.work.put(message)

    # -- BLS ------------------------------------------------------------------------------
    def _request(self, request: pb_utils.InferenceRequest, deliver: Any) -> None:
        packed = shm.pack([(t.name(), t.as_numpy()) for t in request.inputs()])
        bid = next(self._ids)
        with self._pending_lock:
            self._pending[bid] = deliver
        version = request.model_version()
        try:
            self.send(("bls", bid, request.model_name(), None if version < 0 else version, packed,
                       request.requested_output_names(), request.timeout()))
        except BaseException:
            with self._pending_lock:
                self._pending.pop(bid, None)
            shm.discard(packed)
            raise

    @staticmethod
    def _response(reply: tuple) -> pb_utils.InferenceResponse:
        if reply[0] == "ok":
            tensors = shm.unpack(reply[1])
            return pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in tensors.items()])
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(reply[1], reply[2]))

    def infer(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        done = threading.Event()
        box: list[tuple] = []

        def deliver(reply: tuple) -> None:
            box.append(reply)
            done.set()

        self._request(request, deliver)
        done.wait()
        return self._response(box[0])

    def infer_async(self, request: pb_utils.InferenceRequest) -> asyncio.Future:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = asyncio.get_event_loop()
        future = loop.create_future()

        def settle(reply: tuple) -> None:
            if not future.done():
                try:
                    future.set_result(self._response(reply))
                except Exception as e:  # a reply that cannot be read
                    future.set_exception(e)

        self._request(request, lambda reply: loop.call_soon_threadsafe(settle, reply))
        return future

    def send_response(self, key: Any, response: Any, flags: int) -> None:
        """A decoupled model's response (None: only the final flag), from any thread."""
        item = None if response is None else _responses([response], 1)[0]
        self.send(("response", key, item, flags))


def _responses(results: Any, count: int) -> list[tuple]:
    if not isinstance(results, (list, tuple)):
        raise pb_utils.TritonModelException(
            f"execute must return a list of InferenceResponse, got {type(results).__name__}"
        )
    if len(results) != count:
        raise pb_utils.TritonModelException(f"execute returned {len(results)} response(s) for {count} request(s)")
    out = []
    for response in results:
        if not isinstance(response, pb_utils.InferenceResponse):
            raise pb_utils.TritonModelException(
                f"execute must return InferenceResponse objects, got {type(response).__name__}"
            )
        if response.has_error():
            error = response.error()
            out.append(("error", error.message(), error.code()))
        else:
            out.append(("ok", shm.pack([(t.name(), t.as_numpy()) for t in response.output_tensors()])))
    return out


def _run(loop: asyncio.AbstractEventLoop, result: Any) -> Any:
    return loop.run_until_complete(result) if inspect.isawaitable(result) else result


def main(conn: Any, mode: str, model_file: str, payload: dict) -> None:
    """The process's entry point (multiprocessing spawn target)."""
    sys.modules[UTILS_MODULE] = pb_utils
    model_name = payload.get("model_name", "")
    bridge = Bridge(conn, model_name)
    pb_utils._bridge = bridge
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if mode == "autocomplete":
        try:
            cls = _import_model(model_file)
            config = pb_utils.ModelConfig(payload["model_config"])
            if hasattr(cls, "auto_complete_config"):
                config = _run(loop, cls.auto_complete_config(config))
                if not isinstance(config, pb_utils.ModelConfig):
                    raise pb_utils.TritonModelException("auto_complete_config must return the ModelConfig it was given")
            conn.send(("config", json.dumps(config.as_dict())))
        except BaseException as e:
            traceback.print_exc()
            conn.send(("error", _describe(e)))
        return
    try:
        cls = _import_model(model_file)
        model = cls()
        threading.Thread(target=bridge.read_forever, name="pipe", daemon=True).start()
        if hasattr(model, "initialize"):
            _run(loop, model.initialize(dict(payload)))
        if not hasattr(model, "execute"):
            raise AttributeError("TritonPythonModel defines no execute method")
    except BaseException as e:
        traceback.print_exc()
        bridge.send(("init_error", _describe(e)))
        return
    bridge.send(("ready",))
    while True:
        message = bridge.work.get()
        if message[0] == "finalize":
            try:
                if hasattr(model, "finalize"):
                    _run(loop, model.finalize())
            except BaseException:
                traceback.print_exc()
            bridge.send(("finalized",))
            return
        _, eid, packed, requested = message
        decoupled = bool(payload.get("decoupled"))
        try:
            inputs = shm.unpack(packed)
            request = pb_utils.InferenceRequest(
                model_name=model_name,
                inputs=[pb_utils.Tensor(n, a) for n, a in inputs.items()],
                requested_output_names=requested,
                model_version=int(payload.get("model_version", "1") or 1),
            )
            if decoupled:  # its responses go through the request's sender, from any thread
                request._sender_key = eid
                if _run(loop, model.execute([request])) is not None:
                    raise pb_utils.TritonModelException("a decoupled model's execute must return None")
                bridge.send(("executed", eid))  # the next request may come; responses may still follow
                continue
            reply = ("result", eid, _responses(_run(loop, model.execute([request])), 1))
        except BaseException as e:  # model.py raised: this request fails, the instance lives on
            traceback.print_exc()
            reply = ("failed", eid, _describe(e))
        bridge.send(reply)
