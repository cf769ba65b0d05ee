"""Decoding that holds the GIL for long in one C call runs in a small pool of worker processes.

A worker thread does not help there: orjson parsing a 48 MiB body of numbers, or protobuf
parsing 60 MiB of `string_val` elements, is one C call that holds the GIL for most of a
second, and the event loop waits for the GIL as long. So bodies and messages over `LARGE`
bytes are decoded in another process, which sends back what the protocol code needs in a
form that is cheap to receive (numpy arrays travel as one copy of their bytes; BYTES elements
packed as one buffer and their lengths, see `Predecoded`).

The pool starts all its processes (spawned, so they inherit no threads, sockets or models) on
the first large request and reuses them: its memory is all there from then on, not a step
later, when two large requests first overlap. Each process takes one job at a time; jobs wait in the
pool's own queue, so a process that dies (killed for memory, say) fails only the job it was
running (tried once more in a new process, then `WorkerStopped`, UNAVAILABLE: try again), and
is replaced for the jobs that wait.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np

from triserve import datatypes
from triserve.errors import Code, ServerError

T = TypeVar("T")

LARGE = 1 << 20  # bytes: a body or message above this is decoded in a worker process
PROCESSES = 2  # worker processes (each holds at most one request's body and what it decodes to)


class WorkerStopped(ServerError):
    def __init__(self) -> None:
        super().__init__(
            "the process decoding the request stopped before it finished (the request was not run); try again",
            Code.UNAVAILABLE,
        )


class _Slot:
    """One worker process, as an executor of one process that runs one job at a time."""

    def __init__(self) -> None:
        self.executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def start(self) -> None:
        """Its process now, not on its first job (ProcessPoolExecutor spawns on submit)."""
        self.executor.submit(int)

    def renew(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


class ProcessPool:
    """`await pool.run(work, *args)`: `work(*args)` in one of `processes` worker processes.
    `work` and its arguments must pickle (a module-level function, or a functools.partial of
    one). Usable from any event loop; jobs are served first come, first served."""

    def __init__(self, processes: int = PROCESSES) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []  # every slot made so far
        self._idle: list[_Slot] = []
        self._waiting: collections.deque[asyncio.Future[_Slot]] = collections.deque()
        self.crashes = 0  # worker processes that stopped in the middle of a job

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in a worker process. A process that dies during the job (or had died
        idle before it) is replaced and the job tried once more there; a second death is
        WorkerStopped."""
        try:
            return await self._run_once(work, *args)
        except BrokenProcessPool:
            pass
        try:
            return await self._run_once(work, *args)
        except BrokenProcessPool:
            raise WorkerStopped() from None

    async def _run_once(self, work: Callable[..., T], *args: Any) -> T:
        slot = await self._take()
        try:
            future = slot.executor.submit(work, *args)
        except BrokenProcessPool:  # its process died while idle
            self.crashes += 1
            slot.renew()
            self._give(slot)
            raise
        except BaseException:
            self._give(slot)
            raise
        # The slot is free again only when its job is done, even if this caller stops waiting.
        future.add_done_callback(lambda done: self._finished(slot, done))
        return await asyncio.wrap_future(future)

    def _finished(self, slot: _Slot, future: Future) -> None:
        if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
            self.crashes += 1
            slot.renew()
        self._give(slot)

    async def _take(self) -> _Slot:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._idle and not self._waiting:
                return self._idle.pop()
            if not self._slots:  # the first job: every process starts now
                self._slots = [_Slot() for _ in range(self.processes)]
                for spare in self._slots[1:]:
                    spare.start()
                    self._idle.append(spare)
                return self._slots[0]
            waiter: asyncio.Future[_Slot] = loop.create_future()
            self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            with self._lock:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                    raise
            # handed a slot just as the caller went away: pass it on
            if waiter.done() and not waiter.cancelled():
                self._give(waiter.result())
            raise

    def _give(self, slot: _Slot) -> None:
        """From any thread: the slot to the first caller still waiting, else back to idle."""
        with self._lock:
            while self._waiting:
                waiter = self._waiting.popleft()
                try:
                    waiter.get_loop().call_soon_threadsafe(self._hand, waiter, slot)
                    return
                except RuntimeError:  # that caller's event loop is closed
                    continue
            self._idle.append(slot)

    def _hand(self, waiter: asyncio.Future[_Slot], slot: _Slot) -> None:
        if waiter.done():  # cancelled meanwhile
            self._give(slot)
        else:
            waiter.set_result(slot)

    def shutdown(self) -> None:
        with self._lock:
            slots, self._slots, self._idle = self._slots, [], []
        for slot in slots:
            slot.executor.shutdown(wait=False, cancel_futures=True)


_pool: ProcessPool | None = None


def pool() -> ProcessPool:
    """The process-wide pool (made on first use; its processes start on the first job)."""
    global _pool
    if _pool is None:
        _pool = ProcessPool()
    return _pool


async def run(work: Callable[..., T], *args: Any) -> T:
    return await pool().run(work, *args)


class Predecoded:
    """What a worker process made of one tensor's contents: an array, or the ServerError that
    reading them raised, kept until the request's names, datatypes and shapes have passed the
    model's checks in the server process (which then raise that error, or take the array).
    `key` records what the contents were read as (their datatype and shape, say), so that the
    server can check it reads them as the same. Arrays of bytes objects travel packed: one
    buffer and the items' lengths, unpacked by `value()` (on a worker thread: it makes one
    Python object per item)."""

    __slots__ = ("key", "_array", "_packed", "_error")

    def __init__(self, key: Any, array: np.ndarray | None = None, error: ServerError | None = None) -> None:
        self.key = key
        self._array: np.ndarray | None = None
        self._packed: tuple[bytes, np.ndarray, tuple[int, ...]] | None = None
        self._error: tuple[str, Code] | None = (error.message, error.code) if error is not None else None
        if array is not None:
            if array.dtype == np.object_ and all(isinstance(item, bytes) for item in array.flat):
                items = array.ravel().tolist()
                self._packed = (b"".join(items), np.fromiter(map(len, items), np.int64, len(items)), array.shape)
            else:
                self._array = array

    @classmethod
    def skipped(cls, key: Any) -> "Predecoded":
        """Contents left unread: the model's checks refuse the input anyway (see Expected)."""
        return cls(key, error=ServerError("internal error: the tensor contents were not read", Code.INTERNAL))

    @classmethod
    def of(cls, key: Any, work: Callable[..., np.ndarray], *args: Any) -> "Predecoded":
        """`work(*args)`, or the ServerError it raises (any other error becomes an internal one:
        the server's own checks refuse malformed requests before they look at the contents)."""
        try:
            return cls(key, array=work(*args))
        except ServerError as e:
            return cls(key, error=e)
        except Exception:
            return cls(key, error=ServerError("internal error: the tensor contents could not be read", Code.INTERNAL))

    def value(self, key: Any = None) -> np.ndarray:
        """The array, or the error reading it raised; `key`, when given, must be what it was read as."""
        if key is not None and key != self.key:
            raise ServerError("the model changed while the request was read; try again", Code.UNAVAILABLE)
        if self._error is not None:
            raise ServerError(*self._error)
        if self._packed is not None:
            data, lengths, shape = self._packed
            ends = np.cumsum(lengths).tolist()
            starts = [0, *ends[:-1]]
            array = np.empty(len(ends), dtype=np.object_)
            array[:] = [data[start:end] for start, end in zip(starts, ends)]
            return array.reshape(shape)
        assert self._array is not None
        return self._array


class WithPredecoded:
    """A parsed message whose large tensor contents a worker process already read: attributes
    are the message's, but for `overrides` (fields the worker took out of the message, such as
    raw contents, given back as they are); `predecoded` maps each input's name to its
    Predecoded contents."""

    def __init__(self, message: Any, predecoded: dict[str, Predecoded], overrides: dict[str, Any] | None = None) -> None:
        self.message = message
        self.predecoded = predecoded
        self.__dict__.update(overrides or {})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)


@dataclass(frozen=True)
class Expected:
    """What a model's inputs take, for a worker process to leave unread the contents of inputs
    that the model's checks (core Model.check_inputs, in the server) refuse anyway: an unknown
    name, another datatype, a shape that does not fit the dims or a batch over the limit."""

    inputs: dict[str, tuple[str, tuple[int, ...]]]  # name -> (v2 datatype, config dims)
    max_batch_size: int
    split: bool = False  # batches above max_batch_size are split (any batch size goes)

    @classmethod
    def of(cls, model: Any, split: bool = False) -> "Expected":
        """From a core Model (its config's inputs)."""
        inputs = {t.name: (datatypes.name_of_config(t.data_type), tuple(t.dims)) for t in model.config.input}
        return cls(inputs, model.max_batch_size, split)

    def worth_reading(self, name: object, datatype: object, shape: object) -> bool:
        if not isinstance(name, str) or name not in self.inputs:
            return False
        expected, dims = self.inputs[name]
        if datatype != expected or not isinstance(shape, (list, tuple)):
            return False
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            return False
        shape = list(shape)
        if self.max_batch_size > 0:
            if not shape or not (self.split or 1 <= shape[0] <= self.max_batch_size):
                return False
            return datatypes.dims_fit(shape[1:], list(dims))
        return datatypes.dims_fit(shape, list(dims))
