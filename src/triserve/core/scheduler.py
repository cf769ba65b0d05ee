"""Per-model scheduling: a priority queue with Triton's queue policies, feeding one worker per
model instance; with `dynamic_batching`, a worker joins queued requests into one batch.

Workers run on execution threads and take their next batch there; the event loop only queues
requests and hands results back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve.backends import EXECUTION
from triserve.core.stats import ModelStats
from triserve.errors import QueueFull, ServerError, internal, unavailable

# Model executions run here. Each instance's worker has at most one execution in flight, so
# instances never share a thread at the same time; the threads outlive model versions, so a
# reload does not leave another thread's malloc arena behind (unloads give memory back).
EXECUTION_THREADS = ThreadPoolExecutor(max_workers=256, thread_name_prefix="execute")

class _InFlight:
    """How many model executions run in this process now, every model's, from any thread: an
    execution that starts alone may use every core (EXECUTION.alone, InstanceSettings.wide_threads).

    Alone means nothing else runs when it starts and the last busy spell (from the count leaving
    0 until it returned) never had two executions at once. With two requests in flight, each
    arriving while the other runs, the first rule alone would widen every other execution and
    then run three threads on two cores; the second keeps them narrow until an execution has had
    the machine to itself again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self._overlapped = False  # the busy spell going on had two executions at once
        self._last_overlapped = False  # ...the one that ended last did

    @contextlib.contextmanager
    def running(self, alone: bool = True) -> Iterator[None]:
        """An execution on this thread; `alone=False`: the caller knows more work is waiting
        for the cores, so it does not run alone either."""
        with self._lock:
            self.count += 1
            self._overlapped |= self.count > 1
            EXECUTION.alone = alone and self.count == 1 and not self._last_overlapped
        try:
            yield
        finally:
            EXECUTION.alone = False
            with self._lock:
                self.count -= 1
                if self.count == 0:
                    self._last_overlapped, self._overlapped = self._overlapped, False


IN_FLIGHT = _InFlight()

# run(inputs, output_names) -> outputs, called on an execution thread (and, for a model with
# signatures, run(inputs, output_names, signature_name) for a request naming one)
RunFn = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]


class ArrivalOrder:
    """preserve_ordering: results are handed to their waiters in the order the requests arrived
    (each request's `seq`), a result waiting until every earlier one is out."""

    def __init__(self) -> None:
        self._next = 0
        self._finished: dict[int, Any] = {}

    def release(self, item: Any) -> None:
        """`item` has .seq, .future and .result (a value, or an exception to raise)."""
        self._finished[item.seq] = item
        while self._next in self._finished:
            resolve(self._finished.pop(self._next))
            self._next += 1


def resolve(item: Any) -> None:
    """Hand `item.result` to `item.future`, unless its waiter already gave up."""
    if item.future.done():
        return
    if isinstance(item.result, BaseException):
        item.future.set_exception(item.result)
    else:
        item.future.set_result(item.result)


@dataclass(eq=False)
class Pending:
    inputs: dict[str, np.ndarray]
    batch_size: int  # 0 for models without a batch dimension
    future: asyncio.Future
    enqueued_ns: int
    level: int = 0  # index into the queue's levels; 0 is the highest priority
    seq: int = 0
    queued: bool = True
    timer: asyncio.TimerHandle | None = None
    result: Any = None
    signature: str | None = None  # a named signature's request (never joined into a batch)...
    outputs: list[str] | None = None  # ...and the outputs it asks for
    trace: Any = None  # a traced request's Trace (core.trace): its compute times are stamped
    deadline: float = 0.0  # time.monotonic() by which its timeout ends (0: none); backends.EXECUTION shows it


@dataclass
class QueuePolicy:
    reject_on_timeout: bool = True  # REJECT; False is DELAY
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0  # 0: unbounded

    @classmethod
    def from_config(cls, policy: mc.ModelQueuePolicy) -> QueuePolicy:
        return cls(
            reject_on_timeout=policy.timeout_action == mc.ModelQueuePolicy.REJECT,
            default_timeout_us=policy.default_timeout_microseconds,
            allow_timeout_override=policy.allow_timeout_override,
            max_queue_size=policy.max_queue_size,
        )

    def timeout_us(self, requested: int | None) -> int:
        if requested is None or requested <= 0 or not self.allow_timeout_override:
            return self.default_timeout_us
        # A request may shorten the default timeout, never lengthen it.
        return min(requested, self.default_timeout_us) if self.default_timeout_us else requested


@dataclass
class BatchingPolicy:
    max_batch_size: int = 0  # largest batch a worker forms (0: model does not batch)
    dynamic: bool = False
    preferred: list[int] = field(default_factory=list)
    max_queue_delay_ns: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 1
    default_level: int = 1
    policies: list[QueuePolicy] = field(default_factory=lambda: [QueuePolicy()])

    @classmethod
    def from_config(cls, config: mc.ModelConfig, max_batch_size: int) -> BatchingPolicy:
        if config.WhichOneof("scheduling_choice") != "dynamic_batching":
            return cls(max_batch_size=max_batch_size)
        db = config.dynamic_batching
        levels = max(db.priority_levels, 1)
        default_policy = QueuePolicy.from_config(db.default_queue_policy)
        return cls(
            max_batch_size=max_batch_size,
            dynamic=max_batch_size > 0,
            preferred=sorted(s for s in db.preferred_batch_size if 0 < s <= max_batch_size),
            max_queue_delay_ns=db.max_queue_delay_microseconds * 1000,
            preserve_ordering=db.preserve_ordering,
            priority_levels=levels,
            default_level=db.default_priority_level if 1 <= db.default_priority_level <= levels else levels,
            policies=[
                QueuePolicy.from_config(db.priority_queue_policy[level])
                if level in db.priority_queue_policy
                else default_policy
                for level in range(1, levels + 1)
            ],
        )


class RequestQueue:
    """One FIFO per priority level, plus one for requests a DELAY policy pushed back."""

    def __init__(self, levels: int) -> None:
        self.levels: list[deque[Pending]] = [deque() for _ in range(levels)]
        self.delayed: deque[Pending] = deque()

    def __len__(self) -> int:
        return sum(len(q) for q in self.levels) + len(self.delayed)

    def _first(self) -> deque[Pending] | None:
        for q in self.levels:
            while q and not q[0].queued:
                q.popleft()
            if q:
                return q
        while self.delayed and not self.delayed[0].queued:
            self.delayed.popleft()
        return self.delayed or None

    def peek(self) -> Pending | None:
        q = self._first()
        return q[0] if q else None

    def pop(self) -> Pending | None:
        q = self._first()
        if not q:
            return None
        p = q.popleft()
        p.queued = False
        return p

    def delay(self, p: Pending) -> None:
        try:
            self.levels[p.level].remove(p)
        except ValueError:
            return
        self.delayed.append(p)


class Scheduler:
    """Requests queue here on the event loop; each instance's worker takes them on an execution
    thread. A worker, once started, keeps taking batches until the queue is empty (under load
    the next execution starts as the last one ends, without waiting for the event loop, which
    on a busy machine can be late); only results travel back to the loop. The queue is shared
    with the workers under one lock."""

    def __init__(
        self,
        model_name: str,
        runners: list[RunFn],
        output_names: list[str],
        policy: BatchingPolicy,
        stats: ModelStats,
    ) -> None:
        self.model_name = model_name
        self.output_names = output_names
        self.policy = policy
        self.stats = stats
        self.queue = RequestQueue(policy.priority_levels)
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # a request was queued (a batch waiting to fill wakes)
        self._idle_runners = list(reversed(runners))  # instances without a worker; popped from the end
        self._filling = 0  # workers waiting for more requests to fill a batch (max_queue_delay)
        self._seq = 0
        self._order = ArrivalOrder()
        self._running = 0  # batches taken and not yet answered
        self._closed = False

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._running == 0 and len(self.queue) == 0

    async def submit(
        self, inputs: dict[str, np.ndarray], batch_size: int, priority: int = 0, timeout_us: int | None = None
    ) -> dict[str, np.ndarray]:
        """Queue one request and wait for its outputs (all of them, sliced to this request)."""
        return await self.wait(self.enqueue(inputs, batch_size, priority, timeout_us))

    def enqueue(
        self, inputs: dict[str, np.ndarray], batch_size: int, priority: int = 0, timeout_us: int | None = None,
        signature: str | None = None, outputs: list[str] | None = None, trace: Any = None,
    ) -> Pending:
        """Queue one request now (synchronously, so that a caller holding this model version
        is served by it even if a reload swaps in another version before the caller awaits).
        `signature`: run the model's signature of that name for `outputs`, alone (RunFn's third
        argument), instead of the config's tensors. `trace`: a traced request's Trace, stamped
        with the compute times (given here: a worker may run the request before this returns)."""
        if self._closed:
            raise unavailable(f"model '{self.model_name}' is being unloaded")
        level = (priority if 1 <= priority <= self.policy.priority_levels else self.policy.default_level) - 1
        policy = self.policy.policies[level]
        p = Pending(inputs, batch_size, self._loop.create_future(), time.monotonic_ns(), level, self._seq)
        p.signature, p.outputs, p.trace = signature, outputs, trace
        timeout = policy.timeout_us(timeout_us)
        if timeout:
            p.deadline = time.monotonic() + timeout / 1e6  # before a worker can take it
        with self._lock:
            if policy.max_queue_size and len(self.queue.levels[level]) >= policy.max_queue_size:
                full = True
            else:
                full = False
                self.queue.levels[level].append(p)
                self._arrived.notify()
                # a batch waiting to fill takes it; else an instance without a worker starts one
                start = self._idle_runners.pop() if self._idle_runners and not self._filling else None
        if full:
            self.stats.record_failure(0)
            raise QueueFull(f"inference request for model '{self.model_name}' exceeds maximum queue size")
        self._seq += 1
        if timeout:  # its answer comes on this loop, after this returns: the timer is there to cancel
            p.timer = self._loop.call_later(timeout / 1e6, self._expire, p, policy.reject_on_timeout)
        self.stats.pending += 1
        if start is not None:
            EXECUTION_THREADS.submit(self._drain, start)
        return p

    async def wait(self, p: Pending) -> dict[str, np.ndarray]:
        try:
            return await p.future
        except asyncio.CancelledError:
            # The client went away: a request still queued is dropped, never run.
            if self._unqueue(p):
                self._finish(p)
            raise

    def _unqueue(self, p: Pending) -> bool:
        """Take `p` out of the queue if no worker has taken it yet."""
        with self._lock:
            queued, p.queued = p.queued, False
        return queued

    def _expire(self, p: Pending, reject: bool) -> None:
        if reject:
            if self._unqueue(p):
                p.result = unavailable("Request timeout expired")
                self.stats.record_failure(time.monotonic_ns() - p.enqueued_ns)
                self._finish(p)
        else:
            with self._lock:
                if p.queued:
                    self.queue.delay(p)

    def _done(self, p: Pending) -> None:
        """Bookkeeping for a request that leaves the scheduler."""
        self.stats.pending -= 1
        if p.timer is not None:
            p.timer.cancel()

    def _finish(self, p: Pending) -> None:
        """Hand a result (or error) to its waiter, in arrival order when preserve_ordering asks."""
        self._done(p)
        if self.policy.preserve_ordering:
            self._order.release(p)
        else:
            resolve(p)

    # -- on the execution threads ------------------------------------------------------------
    def _take(self) -> list[Pending]:
        """The next batch (empty when nothing is queued), with the lock held. Batches grow to the
        largest preferred size (or the limit) while requests are queued, waiting up to
        max_queue_delay for more when the queue runs dry first."""
        first = self.queue.pop()
        if first is None:
            return []
        self._running += 1
        batch = [first]
        if not self.policy.dynamic or first.signature is not None:
            return batch
        limit = max(self.policy.preferred, default=self.policy.max_batch_size)
        size = first.batch_size
        shapes = {k: v.shape[1:] for k, v in first.inputs.items()}
        deadline = first.enqueued_ns + self.policy.max_queue_delay_ns
        while size < limit:
            nxt = self.queue.peek()
            if nxt is None:
                remaining = deadline - time.monotonic_ns()
                if remaining <= 0 or self._closed:
                    break
                self._filling += 1
                try:
                    self._arrived.wait(remaining / 1e9)
                finally:
                    self._filling -= 1
                continue
            if size + nxt.batch_size > limit or nxt.signature is not None or {k: v.shape[1:] for k, v in nxt.inputs.items()} != shapes:
                break
            batch.append(self.queue.pop())  # type: ignore[arg-type]
            size += nxt.batch_size
        return batch

    def _drain(self, run: RunFn) -> None:
        """One instance's worker: batches until the queue is empty, then the instance waits for
        enqueue() to start it again."""
        while True:
            with self._lock:
                batch = self._take()
                if not batch:
                    self._idle_runners.append(run)
                    return
                waiting = len(self.queue) > 0
                # what is left goes to an instance without a worker
                helper = self._idle_runners.pop() if waiting and self._idle_runners else None
            if helper is not None:
                EXECUTION_THREADS.submit(self._drain, helper)
            start = time.monotonic_ns()
            outcome: tuple[int, int, int] | BaseException
            try:
                outcome = self._execute(run, batch, waiting)
            except BaseException as e:  # the worker must survive anything a backend does
                outcome = e
            try:
                self._loop.call_soon_threadsafe(self._answer, batch, start, outcome)
            except RuntimeError:  # the event loop is closed: nobody is left to answer
                return

    def _answer(self, batch: list[Pending], start: int, outcome: tuple[int, int, int] | BaseException) -> None:
        """On the event loop: a batch's statistics, and its results to their waiters."""
        with self._lock:
            self._running -= 1
        end = time.monotonic_ns()
        if isinstance(outcome, BaseException):
            error = outcome if isinstance(outcome, ServerError) else internal(f"model execution failed: {outcome}")
            for p in batch:
                p.result = error
                self.stats.record_failure(end - p.enqueued_ns)
                self._finish(p)
            return
        input_ns, infer_ns, output_ns = outcome
        self.stats.record_execution(sum(p.batch_size for p in batch) or 1, input_ns, infer_ns, output_ns)
        for p in batch:
            self.stats.record_success(end - p.enqueued_ns, start - p.enqueued_ns, input_ns, infer_ns, output_ns)
            self._finish(p)

    def _execute(self, run: RunFn, batch: list[Pending], waiting: bool = False) -> tuple[int, int, int]:
        """On the instance thread: join, run, split. Results land in each Pending. `waiting`:
        other requests are queued behind this batch (it does not run alone, then)."""
        t0 = time.monotonic_ns()
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
        t1 = time.monotonic_ns()
        EXECUTION.deadline = min((p.deadline for p in batch if p.deadline), default=0.0)
        try:
            with IN_FLIGHT.running(alone=not waiting):
                if batch[0].signature is None:
                    outputs = run(inputs, self.output_names)
                else:  # a named signature's request, always alone: its own outputs
                    outputs = run(inputs, batch[0].outputs, batch[0].signature)  # type: ignore[call-arg]
        finally:
            EXECUTION.deadline = 0.0  # this thread's next execution may be another scheduler's
        t2 = time.monotonic_ns()
        if len(batch) == 1:
            batch[0].result = outputs
        else:
            offset = 0
            for p in batch:
                end = offset + p.batch_size
                p.result = {name: value[offset:end] for name, value in outputs.items()}
                offset = end
        t3 = time.monotonic_ns()
        for p in batch:
            if p.trace is not None:
                p.trace.compute(t0, t1, t2, t3)
        return t1 - t0, t2 - t1, t3 - t2

    async def close(self) -> None:
        """Finish the queue; the workers end with it."""
        await asyncio.sleep(0)  # let requests already handed this version reach the queue
        while not self.idle:
            await asyncio.sleep(0.005)
        with self._lock:
            self._closed = True
            self._arrived.notify_all()
