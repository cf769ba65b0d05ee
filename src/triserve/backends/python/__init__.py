"""Triton's Python backend (`backend: "python"`, `<version>/model.py` with `TritonPythonModel`).

Each instance is its own spawned process (stub.py) that imports model.py; requests and
responses travel over a pipe, their tensors through shared memory (shm.py). What model.py
does cannot take the server down:
- it raises in execute: that request fails with its message, the instance keeps serving;
- its process dies (os._exit, a crash) or execute outlives the request's timeout: that request
  fails (INTERNAL, with the reason), the process is stopped and the instance answers every later
  request with the same reason until the model is loaded again, which starts new processes.

`pb_utils.InferenceRequest(...).exec()` in model.py (BLS) reaches the server through the pipe;
the server runs it with `InstanceSettings.models`, the core's way to call any loaded model.

Decoupled models (`model_transaction_policy { decoupled: true }`) answer through
`request.get_response_sender()`: `run_stream` hands each response on as it arrives; as in Triton,
the instance takes its next request once execute returned, while earlier responses still come.

Requests batched by the dynamic batcher reach execute() as one request of the joined batch (not
one InferenceRequest per client request).

Not supported (refused at load): `EXECUTION_ENV_PATH` (packed conda environments).
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor, json_format
from tritonclient.grpc import model_config_pb2 as mc

from triserve.backends import EXECUTION, InstanceSettings
from triserve.backends.python import shm, stub
from triserve.errors import Code, ServerError, internal, invalid, unavailable

log = logging.getLogger("triserve")

BACKEND = "python"
DEFAULT_FILENAME = "model.py"
MEASURE_BATCHES = False  # the core must not run execute() at load to time batch sizes (it may have effects)
START_TIMEOUT_S = 300.0  # import and initialize() of one instance
STOP_TIMEOUT_S = 10.0  # finalize() before the process is killed

_CONTEXT = multiprocessing.get_context("spawn")
# BLS calls wait here for the models they call (each call blocks one thread until answered).
_BLS_THREADS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="bls")
_instance_numbers: dict[tuple[str, str], itertools.count] = {}  # (model, version) -> instance numbers

# pb_utils.TritonError codes -> ours
_CODES = {0: Code.INTERNAL, 1: Code.INTERNAL, 2: Code.NOT_FOUND, 3: Code.INVALID_ARG, 4: Code.UNAVAILABLE,
          5: Code.UNSUPPORTED, 6: Code.ALREADY_EXISTS, 7: Code.UNAVAILABLE}
_FROM_CODES = {Code.INTERNAL: 1, Code.NOT_FOUND: 2, Code.INVALID_ARG: 3, Code.UNAVAILABLE: 4, Code.UNSUPPORTED: 5,
               Code.ALREADY_EXISTS: 6}


def config_json(config: mc.ModelConfig) -> str:
    """The config as Triton hands it to model.py: JSON, field names as in config.pbtxt, numbers as numbers."""
    return json.dumps(_numbers(config, json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)))


_INT64 = {descriptor.FieldDescriptor.CPPTYPE_INT64, descriptor.FieldDescriptor.CPPTYPE_UINT64}


def _numbers(message: Any, value: dict) -> dict:
    """MessageToDict writes 64-bit integers as strings; Triton's JSON has numbers."""
    for field in message.DESCRIPTOR.fields:
        if field.name not in value:
            continue
        item = value[field.name]
        if field.cpp_type in _INT64:
            value[field.name] = [int(v) for v in item] if isinstance(item, list) else int(item)
        elif field.cpp_type == descriptor.FieldDescriptor.CPPTYPE_MESSAGE:
            sub = getattr(message, field.name)
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.cpp_type == descriptor.FieldDescriptor.CPPTYPE_MESSAGE:
                    for key in item:
                        _numbers(sub[_map_key(sub, key)], item[key])
                elif value_field.cpp_type in _INT64:
                    value[field.name] = {k: int(v) for k, v in item.items()}
            elif _repeated(field):
                for m, v in zip(sub, item):
                    _numbers(m, v)
            else:
                _numbers(sub, item)
    return value


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # newer protobuf; label() is deprecated there
    return bool(flag) if flag is not None else field.label == descriptor.FieldDescriptor.LABEL_REPEATED


def _map_key(mapping: Any, key: str) -> Any:
    for k in mapping:
        if str(k) == key:
            return k
    return key


def _refuse_unsupported(config: mc.ModelConfig) -> None:
    for key in config.parameters:
        if key.upper() == "EXECUTION_ENV_PATH":
            raise invalid(
                f"unable to load model '{config.name}': parameter EXECUTION_ENV_PATH (a packed Python environment)"
                " is not supported by triserve; model.py runs with the server's own Python and packages"
            )


class _Ended(Exception):
    """The stub process is gone (its end of the pipe closed)."""


def _wait(conn: Any, process: Any, timeout_s: float) -> tuple | None:
    """The next message, or None when `timeout_s` passed without one; _Ended when the process ended."""
    end = time.monotonic() + timeout_s
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return None
        try:
            if conn.poll(min(left, 1.0)):
                return conn.recv()
        except (EOFError, OSError):
            raise _Ended() from None
        if not process.is_alive() and not conn.poll(0):
            raise _Ended()


def _exit_reason(process: Any) -> str:
    process.join(1.0)
    code = process.exitcode
    if code is None:
        return "its process stopped answering"
    if code < 0:
        return f"its process was killed by signal {-code}"
    return f"its process exited with code {code}"


def completes(config: mc.ModelConfig, model_file: Path) -> bool:
    """Whether model.py completes its config (defines auto_complete_config): Triton calls it at
    every load, also for a config.pbtxt that looks complete. Read from the source, not imported."""
    try:
        return "def auto_complete_config" in model_file.read_text(errors="replace")
    except OSError:
        return False


def autocomplete(config: mc.ModelConfig, model_file: Path) -> None:
    """Run model.py's `auto_complete_config` (in a process of its own) and take the config it returns."""
    _refuse_unsupported(config)
    if not model_file.is_file():
        raise invalid(f"model file {model_file} not found")
    parent, child = _CONTEXT.Pipe()
    payload = {"model_name": config.name, "model_config": config_json(config)}
    process = _CONTEXT.Process(target=stub.main, args=(child, "autocomplete", str(model_file), payload), daemon=True)
    process.start()
    child.close()
    try:
        message = _wait(parent, process, START_TIMEOUT_S)
    except _Ended:
        message = None
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        parent.close()
    if message is None:
        raise invalid(f"unable to auto-complete the configuration of model '{config.name}': {_exit_reason(process)}")
    if message[0] == "error":
        raise invalid(f"unable to auto-complete the configuration of model '{config.name}': {message[1]}")
    completed = mc.ModelConfig()
    try:
        json_format.ParseDict(json.loads(message[1]), completed)
    except (json_format.ParseError, ValueError) as e:
        raise invalid(f"model '{config.name}': auto_complete_config returned a configuration that does not parse: {e}") from None
    completed.name = config.name
    config.CopyFrom(completed)


class _Call:
    """One exchange with the stub, answered on the instance's reader thread."""

    def __init__(self, on_response: Any = None) -> None:
        self.on_response = on_response  # a decoupled request's responses
        self.executed = threading.Event()  # execute returned (decoupled: responses may follow)
        self.finished = threading.Event()  # the answer (or the last response) came, or the process ended
        self.message: tuple | None = None

    def finish(self, message: tuple | None) -> None:
        self.message = message
        self.executed.set()
        self.finished.set()


class PythonInstance:
    """One instance: its stub process, the pipe to it and the thread that reads the pipe.

    One request is executed at a time (as in Triton); a decoupled request holds the instance
    only until its execute returns, its responses may come after."""

    def __init__(self, config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> None:
        _refuse_unsupported(config)
        if not model_file.is_file():
            raise invalid(f"model file {model_file} not found")
        self.model_name = config.name
        self.output_names = [o.name for o in config.output]
        self._models = settings.models
        number = next(_instance_numbers.setdefault((config.name, model_file.parent.name), itertools.count()))
        self.instance_name = f"{config.name}_0_{number}"
        self.failed = ""  # why this instance no longer serves
        self._ended = False  # the process is gone
        self._lock = threading.Lock()  # one execution at a time
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}  # by id; 0: initialize, -1: finalize
        self._calls_lock = threading.Lock()
        kind = "GPU" if settings.device.startswith("cuda") else "CPU"
        args = {
            "model_config": config_json(config),
            "model_instance_kind": kind,
            "model_instance_name": self.instance_name,
            "model_instance_device_id": settings.device.partition(":")[2] or "0",
            "model_repository": str(model_file.parent.parent),
            "model_version": model_file.parent.name,
            "model_name": config.name,
            "decoupled": config.model_transaction_policy.decoupled,
        }
        self._conn, child = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(
            target=stub.main, args=(child, "serve", str(model_file), args), name=self.instance_name, daemon=True
        )
        started = self._call(0)
        self._process.start()
        child.close()
        threading.Thread(target=self._read, name=f"pipe-{self.instance_name}", daemon=True).start()
        if not started.finished.wait(START_TIMEOUT_S) or started.message is None:
            reason = _exit_reason(self._process)
            self._stop()
            raise invalid(f"unable to load model '{config.name}': initialize did not finish: {reason}")
        if started.message[0] == "init_error":
            self._stop()
            raise invalid(f"unable to load model '{config.name}': {started.message[1]}")

    # -- the pipe -------------------------------------------------------------------------
    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _call(self, eid: int, on_response: Any = None) -> _Call:
        call = _Call(on_response)
        with self._calls_lock:
            self._calls[eid] = call
        return call

    def _take(self, eid: int) -> _Call | None:
        with self._calls_lock:
            return self._calls.pop(eid, None)

    def _read(self) -> None:
        """The reader thread: hands each message to whom it is for, until the process ends."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "bls":
                _BLS_THREADS.submit(self._bls, *message[1:])
            elif kind in ("ready", "init_error"):
                call = self._take(0)
                if call is not None:
                    call.finish(message)
            elif kind == "finalized":
                call = self._take(-1)
                if call is not None:
                    call.finish(message)
            elif kind == "executed":  # a decoupled model's execute returned
                with self._calls_lock:
                    call = self._calls.get(message[1])
                if call is not None:
                    call.executed.set()
            elif kind == "response":
                with self._calls_lock:
                    call = self._calls.get(message[1])
                if call is None or call.on_response is None:  # its request is gone (timed out)
                    if message[2] is not None and message[2][0] == "ok":
                        shm.discard(message[2][1])
                    continue
                try:
                    final = call.on_response(message)
                except Exception:  # the receiver's problem must not stop the reader
                    log.exception("model '%s': handing on a response", self.model_name)
                    final = False
                if final:
                    self._take(message[1])
                    call.finish(message)
            elif kind in ("result", "failed"):
                call = self._take(message[1])
                if call is not None:
                    call.finish(message)
                elif kind == "result":  # a stale answer: its request timed out
                    for item in message[2]:
                        if item[0] == "ok":
                            shm.discard(item[1])
        self._ended = True
        with self._calls_lock:
            calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            call.finish(None)

    def _bls(self, bid: int, model: str, version: int | None, packed: shm.Packed, requested: list[str],
             timeout_us: int) -> None:
        """On a BLS thread: run a model.py's request on the model it names; answer the stub."""
        try:
            inputs = shm.unpack(packed)
            if self._models is None:
                raise unavailable("this server cannot run requests from Python models")
            outputs = self._models(model, version, inputs, requested or None)
            reply: tuple = ("bls_result", bid, "ok", shm.pack(list(outputs.items())))
        except ServerError as e:
            reply = ("bls_result", bid, "error", e.message, _FROM_CODES.get(e.code, 1))
        except Exception as e:  # never let a BLS thread die silently
            log.exception("BLS request of model '%s' to model '%s'", self.model_name, model)
            reply = ("bls_result", bid, "error", f"the request to model '{model}' failed: {type(e).__name__}", 1)
        try:
            self._send(reply)
        except (OSError, ValueError):  # the stub is gone
            if reply[2] == "ok":
                shm.discard(reply[3])

    # -- the backend interface ------------------------------------------------------------
    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        message = self._execute(inputs)
        item = message[2][0]
        if item[0] == "error":
            raise ServerError(item[1], _CODES.get(item[2], Code.INTERNAL))
        return self._outputs(item[1], outputs)

    def run_stream(self, inputs: dict[str, np.ndarray], outputs: list[str], emit: Any) -> None:
        """A decoupled model's request: `emit(outputs or ServerError or None, final)` for each
        response (on the reader thread); returns after the last (one with the final flag)."""

        def on_response(message: tuple) -> bool:
            _, _, item, flags = message
            final = bool(flags & 1)
            if item is None:
                emit(None, final)
            elif item[0] == "error":
                emit(ServerError(item[1], _CODES.get(item[2], Code.INTERNAL)), final)
            else:
                try:
                    emit(self._outputs(item[1], []), final)
                except ServerError as e:
                    emit(e, final)
            return final

        self._execute(inputs, on_response)

    def _outputs(self, packed: shm.Packed, outputs: list[str]) -> dict[str, np.ndarray]:
        results = shm.unpack(packed)
        missing = [name for name in outputs if name not in results]
        if missing:
            raise internal(f"model '{self.model_name}' returned no output '{missing[0]}' (it returned"
                           f" {sorted(results) or 'none'})")
        return results

    def _execute(self, inputs: dict[str, np.ndarray], on_response: Any = None) -> tuple:
        """Send one request and wait for its answer (decoupled: its last response); raises for a
        failed execute or instance. The instance takes the next request once execute returned."""
        deadline = EXECUTION.deadline
        with self._lock:
            if self.failed:
                raise internal(self.failed)
            if deadline and deadline <= time.monotonic():  # expired before it started: nothing to stop
                raise unavailable("Request timeout expired")
            eid = next(self._ids)
            call = self._call(eid, on_response)
            packed = shm.pack(list(inputs.items()))
            try:
                if self._ended:  # it died while idle: the reader thread has finished
                    raise BrokenPipeError()
                self._send(("execute", eid, packed, list(self.output_names)))
            except (OSError, ValueError):
                self._take(eid)
                shm.discard(packed)
                self._fail(_exit_reason(self._process), " before the request reached it")
                raise internal(self.failed) from None
            self._await(call, "executed", deadline, eid, packed)
        self._await(call, "finished", deadline, eid, packed)
        message = call.message
        assert message is not None
        if message[0] == "failed":
            raise internal(f"Failed to process the request(s) for model instance '{self.instance_name}',"
                           f" message: {message[2]}")
        return message

    def _await(self, call: _Call, stage: str, deadline: float, eid: int, packed: shm.Packed) -> None:
        """Wait for the request's `stage` ("executed" or "finished") until its deadline; a timeout
        or a process that ended fails the instance."""
        event = call.executed if stage == "executed" else call.finished
        timeout = max(deadline - time.monotonic(), 0.0) if deadline else None
        if event.wait(timeout):
            if call.message is not None or not call.finished.is_set():
                return  # answered (or, decoupled, execute returned and responses may follow)
            shm.discard(packed)  # the process ended first; unless the stub mapped it already
            self._fail(_exit_reason(self._process), " while executing a request")
            raise internal(self.failed)
        self._take(eid)
        shm.discard(packed)
        self._fail("execute did not finish within the request's timeout", "; the process was stopped")
        raise internal(self.failed)

    def _fail(self, reason: str, detail: str) -> None:
        if not self.failed:
            self.failed = (f"model '{self.model_name}' instance '{self.instance_name}' failed: {reason}{detail}; it"
                           " serves no more requests until the model is loaded again")
            log.error("%s", self.failed)
        self._stop()

    def _stop(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(STOP_TIMEOUT_S)
        self._conn.close()

    def close(self) -> None:
        with self._lock:
            if self.failed:
                return
            self.failed = f"model '{self.model_name}' is unloaded"
            if self._process.is_alive() and not self._ended:
                done = self._call(-1)
                try:
                    self._send(("finalize",))
                    done.finished.wait(STOP_TIMEOUT_S)
                except (OSError, ValueError):
                    pass
            self._stop()


def load(config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> PythonInstance:
    return PythonInstance(config, model_file, settings)
