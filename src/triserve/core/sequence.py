"""The sequence batcher (`sequence_batching` in config.pbtxt), as Triton's core implements it.

A sequence is the requests that share a correlation id (`sequence_id`, uint64 or string), from
the one flagged `sequence_start` to the one flagged `sequence_end`. Each sequence holds a
*sequence slot* of one model instance from its start to its end (or until it has been idle for
`max_sequence_idle_microseconds`); sequences beyond the slots wait in a backlog, oldest first,
for a slot to come free. An instance has max(1, max_batch_size) slots (`oldest`: its
`max_candidate_sequences` when set).

Each execution takes at most one request per slot, so the requests of a sequence run one after
another, in order, always on the same instance:
- `direct`: row i of the batch is slot i; a slot with nothing queued gets a padding row whose
  READY control is false (`max_queue_delay_microseconds` with `minimum_slot_utilization` waits for
  fuller batches);
- `oldest`: the slots' oldest requests, up to the largest preferred batch size, waiting up to
  `max_queue_delay_microseconds` for more.

The server fills the control inputs (`CONTROL_SEQUENCE_START/END/READY` as `int32_false_true`,
`fp32_false_true` or `bool_false_true`; `CONTROL_SEQUENCE_CORRID` as the correlation id) and the
implicit state (`state { input_name output_name data_type dims initial_state }`): the state input
of a sequence's first request is its initial state (zeros, or `initial_state`), of every later
request the state output of the one before.

Idle time is read from an injectable clock (`clock`, nanoseconds), so that tests decide when a
sequence has been idle too long; `reap()` frees the slots of idle sequences (it runs on every
request and from a background task).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.core.scheduler import EXECUTION_THREADS, IN_FLIGHT, ArrivalOrder, RunFn, resolve
from triserve.core.stats import ModelStats
from triserve.errors import ServerError, internal, invalid, unavailable

log = logging.getLogger("triserve")

SEQUENCE_IDLE_DEFAULT_US = 1_000_000  # Triton's default max_sequence_idle_microseconds

Kind = mc.ModelSequenceBatching.Control.Kind
START, END, READY, CORRID = (
    Kind.Value("CONTROL_SEQUENCE_START"),
    Kind.Value("CONTROL_SEQUENCE_END"),
    Kind.Value("CONTROL_SEQUENCE_READY"),
    Kind.Value("CONTROL_SEQUENCE_CORRID"),
)
_CORRID_TYPES = {mc.TYPE_UINT64, mc.TYPE_INT64, mc.TYPE_UINT32, mc.TYPE_INT32, mc.TYPE_STRING}
_INTEGER_CORRID_TYPES = _CORRID_TYPES - {mc.TYPE_STRING}

CorrelationId = int | str

# Backends whose runners take the control and state inputs by name.
SUPPORTED_PLATFORMS = {"onnxruntime_onnx", "onnxruntime"}


@dataclass(frozen=True)
class BoolControl:
    """A START/END/READY control input: the tensor the server sets to `true` or `false`."""

    name: str
    dtype: np.dtype
    false: Any
    true: Any

    def value(self, flag: bool) -> Any:
        return self.true if flag else self.false


@dataclass(frozen=True)
class CorridControl:
    name: str
    data_type: int  # a config TYPE_* enum value

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.object_) if self.data_type == mc.TYPE_STRING else datatypes.numpy_of_config(self.data_type)


@dataclass(frozen=True)
class StateSpec:
    input_name: str
    output_name: str
    dtype: np.dtype
    initial: np.ndarray  # a sequence's state before its first request, without the batch dimension


@dataclass
class SequencePolicy:
    strategy: str  # "direct" or "oldest"
    idle_ns: int
    slots: int  # sequence slots per instance
    start: BoolControl | None = None
    end: BoolControl | None = None
    ready: BoolControl | None = None
    corrid: CorridControl | None = None
    states: list[StateSpec] = field(default_factory=list)
    max_queue_delay_ns: int = 0
    preferred: list[int] = field(default_factory=list)  # oldest
    minimum_slot_utilization: float = 0.0  # direct
    preserve_ordering: bool = False  # oldest: answers in the order the requests arrived, across sequences

    @property
    def extra_inputs(self) -> list[str]:
        """The model inputs the server fills in, not the client."""
        names = [c.name for c in (self.start, self.end, self.ready, self.corrid) if c is not None]
        return names + [s.input_name for s in self.states]

    @property
    def state_outputs(self) -> list[str]:
        return [s.output_name for s in self.states]

    @classmethod
    def from_config(cls, config: mc.ModelConfig, model_dir: Path | None = None) -> SequencePolicy:
        """The policy of a config with `sequence_batching`; a setting triserve does not implement
        (or that Triton refuses) fails here, so the model fails to load with the reason."""
        name = config.name
        sb = config.sequence_batching
        if (config.platform or config.backend) not in SUPPORTED_PLATFORMS:
            raise invalid(
                f"model '{name}': sequence_batching is supported for onnxruntime_onnx models only by triserve,"
                f" not for {config.platform or config.backend}"
            )
        if sb.iterative_sequence:
            raise invalid(f"model '{name}': sequence_batching 'iterative_sequence' is not supported by triserve")
        if config.response_cache.enable:
            raise invalid(
                f"Response Cache does not currently support model {name} with sequence batching scheduler."
                " Please disable the response cache."
            )
        if config.model_warmup:
            raise invalid(f"model '{name}': model_warmup is not supported with sequence_batching by triserve")
        if config.model_transaction_policy.decoupled:
            raise invalid(f"model '{name}': decoupled models are not supported by triserve")
        controls = _controls(sb, name)
        # The config as Triton completes it (what /config answers).
        if not sb.max_sequence_idle_microseconds:
            sb.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_US
        max_batch = config.max_batch_size
        policy = cls(
            strategy="oldest" if sb.HasField("oldest") else "direct",
            idle_ns=sb.max_sequence_idle_microseconds * 1000,
            slots=max(1, max_batch),
            start=controls.get(START),
            end=controls.get(END),
            ready=controls.get(READY),
            corrid=controls.get(CORRID),
            states=_states(sb, config, model_dir),
        )
        if sb.HasField("oldest"):
            oldest = sb.oldest
            for size in oldest.preferred_batch_size:
                if size <= 0:
                    raise invalid(f"sequence batching preferred batch size must be positive for {name}")
                if size > max_batch:
                    raise invalid(f"sequence batching preferred batch size must be <= max batch size for {name}")
            if oldest.max_candidate_sequences > 0:
                policy.slots = oldest.max_candidate_sequences
            if not oldest.preferred_batch_size and max_batch > 0:
                oldest.preferred_batch_size.append(max_batch)
            policy.preferred = sorted(oldest.preferred_batch_size)
            policy.max_queue_delay_ns = oldest.max_queue_delay_microseconds * 1000
            policy.preserve_ordering = oldest.preserve_ordering
        else:
            direct = sb.direct
            if not 0.0 <= direct.minimum_slot_utilization <= 1.0:
                raise invalid(f"sequence batching minimum slot utilization must be in range (0.0, 1.0] for {name}")
            policy.max_queue_delay_ns = direct.max_queue_delay_microseconds * 1000
            policy.minimum_slot_utilization = direct.minimum_slot_utilization
        declared = {t.name for t in config.input}
        seen: set[str] = set()
        for extra in policy.extra_inputs:
            if extra in declared:
                raise invalid(
                    f"model '{name}': '{extra}' is a sequence batching control or state input; it must not also be"
                    " listed as a model input"
                )
            if extra in seen:
                raise invalid(f"model '{name}': '{extra}' is named more than once as a sequence control or state input")
            seen.add(extra)
        outputs = {t.name for t in config.output}
        for state in policy.states:
            if state.output_name in outputs:
                raise invalid(
                    f"model '{name}': state output '{state.output_name}' must not also be listed as a model output"
                )
        return policy


def _controls(sb: mc.ModelSequenceBatching, model: str) -> dict[int, BoolControl | CorridControl]:
    """The control inputs, checked with Triton's rules and words (model_config_utils.cc)."""
    found: dict[int, BoolControl | CorridControl] = {}
    seen_tensors: set[str] = set()
    for control_input in sb.control_input:
        if not control_input.name:
            raise invalid(f"sequence batching control tensor must have a name for {model}")
        if control_input.name in seen_tensors:
            raise invalid(
                f"sequence batching control tensor '{control_input.name}' is specified for multiple control kinds"
                f" for {model}"
            )
        seen_tensors.add(control_input.name)
        if len(control_input.control) != 1:
            raise invalid(
                f"sequence batching control tensor '{control_input.name}' of {model} must have exactly one control"
            )
        for c in control_input.control:
            kind = Kind.Name(c.kind)
            if c.kind in found:
                raise invalid(f"sequence batching specifies multiple {kind} tensors for {model}")
            given = [n for n in ("int32_false_true", "fp32_false_true", "bool_false_true") if len(getattr(c, n))]
            if c.kind == CORRID:
                if given:
                    raise invalid(
                        "sequence batching must not specify either 'int32_false_true', 'fp32_false_true' or"
                        f" 'bool_false_true' for {kind} for {model}"
                    )
                if c.data_type not in _CORRID_TYPES:
                    raise invalid(
                        f"unexpected data type for control {kind} for {model}. Allowed data types are TYPE_UINT64,"
                        " TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"
                    )
                found[c.kind] = CorridControl(control_input.name, c.data_type)
                continue
            if not given:
                raise invalid(
                    "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or"
                    f" 'bool_false_true' for {kind} for {model}"
                )
            if len(given) > 1:
                raise invalid(
                    "sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' and"
                    f" 'bool_false_true' for {kind} for {model}"
                )
            values = list(getattr(c, given[0]))
            if len(values) != 2:
                raise invalid(f"sequence batching control '{given[0]}' must have exactly 2 entries for {kind} for {model}")
            dtype = {"int32_false_true": np.int32, "fp32_false_true": np.float32, "bool_false_true": np.bool_}[given[0]]
            found[c.kind] = BoolControl(control_input.name, np.dtype(dtype), dtype(values[0]), dtype(values[1]))
    return found


def _states(sb: mc.ModelSequenceBatching, config: mc.ModelConfig, model_dir: Path | None) -> list[StateSpec]:
    states = []
    for state in sb.state:
        where = f"state input '{state.input_name}'"
        if not state.input_name or not state.output_name:
            raise invalid(f"model '{config.name}': a sequence batching state needs an input_name and an output_name")
        if state.data_type == mc.TYPE_INVALID:
            raise invalid(f"model '{config.name}': {where} has no valid data_type")
        if not state.dims:
            raise invalid(f"model '{config.name}': {where} must have dims")
        if state.use_growable_memory:
            raise invalid(
                "'use_growable_memory' can only work with KIND_GPU model instances right now. Please either change"
                f" the instance type to KIND_GPU or set 'use_growable_memory' to false for {where}."
            )
        dtype = np.dtype(np.object_) if state.data_type == mc.TYPE_STRING else datatypes.numpy_of_config(state.data_type)
        if len(state.initial_state) > 1:
            raise invalid(
                f"initial_state field for {where} must contain exactly one or zero element."
                f" Found '{len(state.initial_state)}' elements."
            )
        if state.initial_state:
            initial = _initial_state(state, state.initial_state[0], dtype, model_dir)
        else:
            # Triton starts a variable dimension at 1; the data is zeros (Triton leaves it unset).
            shape = [1 if d == -1 else d for d in state.dims]
            initial = np.full(shape, b"", dtype=dtype) if dtype == np.object_ else np.zeros(shape, dtype=dtype)
        states.append(StateSpec(state.input_name, state.output_name, dtype, initial))
    return states


def _initial_state(state, initial, dtype: np.dtype, model_dir: Path | None) -> np.ndarray:
    where = state.input_name
    if initial.data_type != state.data_type:
        raise invalid(f"The data type used for 'initial_state' field of state '{where}' does not match the state data type.")
    if not initial.name:
        raise invalid(f"Field 'name' must be set when using initial_state for state input '{where}'.")
    if len(initial.dims) != len(state.dims):
        raise invalid(
            "Number of dimensions in 'initial_state' doesn't match the size of 'state' dimensions for state input"
            f" '{where}'. {len(initial.dims)} != {len(state.dims)}"
        )
    for dim, state_dim in zip(initial.dims, state.dims):
        if dim < 0:
            raise invalid(f"'initial_state' field for state input name '{where}' contains variable dimensions.")
        if state_dim != -1 and dim != state_dim:
            raise invalid(
                f"'initial_state' dim for input name '{where}' doesn't match 'state' dim description."
                f" {dim} != {state_dim}"
            )
    shape = list(initial.dims)
    which = initial.WhichOneof("state_data")
    if which == "zero_data":
        return np.full(shape, b"", dtype=dtype) if dtype == np.object_ else np.zeros(shape, dtype=dtype)
    if which != "data_file":
        raise invalid(f"initial_state setting expects state'{where}' to have state_data set")
    if dtype == np.object_:
        raise invalid(f"initial_state 'data_file' for the STRING state '{where}' is not supported by triserve")
    if model_dir is None:
        raise invalid(f"initial_state 'data_file' of state '{where}' needs the model's folder")
    path = model_dir / "initial_state" / initial.data_file
    if not path.resolve().is_relative_to(model_dir.resolve()) or not path.is_file():
        raise invalid(f"initial_state data file '{initial.data_file}' of state '{where}' not found")
    data = path.read_bytes()
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) < expected:
        raise invalid(
            f"initial_state setting expects {expected} bytes, but the data provided from {initial.data_file}only"
            f" has {len(data)} bytes."
        )
    return np.frombuffer(data[:expected], dtype=dtype).reshape(shape).copy()


# -- the batcher ----------------------------------------------------------------------------


@dataclass(eq=False)
class Sequence:
    corrid: CorrelationId
    last_ns: int
    slot: Slot | None = None
    waiting: deque[SequenceRequest] = field(default_factory=deque)  # queued while in the backlog
    expires_ns: int | None = None  # in the backlog: when its requests' `timeout` runs out (by the clock)
    state: dict[str, np.ndarray] | None = None  # the state inputs of its next request


@dataclass(eq=False)
class SequenceRequest:
    inputs: dict[str, np.ndarray]
    sequence: Sequence
    start: bool
    end: bool
    future: asyncio.Future
    enqueued_ns: int
    seq: int | None = None  # the order it entered its slot's queue (preserve_ordering)
    queued: bool = True
    result: Any = None


@dataclass(eq=False)
class Slot:
    instance: int
    index: int
    queue: deque[SequenceRequest] = field(default_factory=deque)
    sequence: Sequence | None = None
    busy: bool = False


class SequenceBatcher:
    def __init__(
        self,
        model_name: str,
        runners: list[RunFn],
        output_names: list[str],
        policy: SequencePolicy,
        max_batch_size: int,
        stats: ModelStats,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.model_name = model_name
        self.policy = policy
        self.batching = max_batch_size > 0
        self.output_names = list(output_names) + [o for o in policy.state_outputs if o not in output_names]
        self.stats = stats
        self.clock = clock
        self.slots = [[Slot(i, s) for s in range(policy.slots)] for i in range(len(runners))]
        # Free slots, lowest slot index first, so that sequences spread over the instances.
        self._free: list[tuple[int, int]] = [(s, i) for i in range(len(runners)) for s in range(policy.slots)]
        heapq.heapify(self._free)
        self.active: dict[CorrelationId, Sequence] = {}  # sequences that have started and not ended
        self.backlog: deque[Sequence] = deque()  # sequences waiting for a slot
        self._wake = [asyncio.Event() for _ in runners]
        self.executions = [0] * len(runners)  # per instance
        self._arrivals = 0
        self._order = ArrivalOrder()
        self._running = 0
        self._closed = False
        self._workers = [asyncio.create_task(self._work(i, run)) for i, run in enumerate(runners)]
        self._reaper = asyncio.create_task(self._reap_forever())

    # -- queueing ---------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return self._running == 0 and not any(s.queue for slots in self.slots for s in slots) and not self.backlog

    def enqueue(
        self,
        inputs: dict[str, np.ndarray],
        batch_size: int,
        corrid: CorrelationId,
        start: bool,
        end: bool,
        timeout_us: int | None = None,
    ) -> SequenceRequest:
        """Queue one request of a sequence now (synchronously: requests of a sequence are queued,
        and run, in the order they arrive). `timeout_us` limits how long a sequence waits in the
        backlog for a slot (Triton: the sequence's requests are then rejected)."""
        name = self.model_name
        if self._closed:
            raise unavailable(f"model '{name}' is being unloaded")
        if batch_size > 1:
            raise invalid(
                f"inference request to model '{name}' must specify batch-size 1 due to requirements of sequence batcher"
            )
        if corrid == 0 or corrid == "":
            raise invalid(f"inference request to model '{name}' must specify a non-zero or non-empty correlation ID")
        self._check_corrid_type(corrid)
        now = self.clock()
        sequence = self.active.get(corrid)
        if sequence is not None and self._idle_too_long(sequence, now):
            self._reap(sequence)
            sequence = None
        if sequence is None and not start:
            raise invalid(
                f"inference request for sequence {corrid} to model '{name}' must specify the START flag on the first"
                " request of the sequence"
            )
        if sequence is not None and start:
            log.warning(
                "sequence %s for model '%s' has a conflict. The previous sequence did not end before this sequence"
                " start. Previous sequence will be terminated early.", corrid, name,
            )
        if sequence is None:
            sequence = self.active[corrid] = Sequence(corrid, now)
            if not self._free:
                self.reap()
            if self._free:
                self._assign(sequence, heapq.heappop(self._free))
            else:
                self.backlog.append(sequence)
        sequence.last_ns = now
        request = SequenceRequest(inputs, sequence, start, end, asyncio.get_running_loop().create_future(), time.monotonic_ns())
        if end:
            del self.active[corrid]  # a later request with this id must start a new sequence
        self.stats.pending += 1
        if sequence.slot is not None:
            self._queue(sequence.slot, request)
        else:
            sequence.waiting.append(request)
            if timeout_us:
                expires = now + timeout_us * 1000
                sequence.expires_ns = expires if sequence.expires_ns is None else min(sequence.expires_ns, expires)
                asyncio.get_running_loop().call_later(timeout_us / 1e6, self.reap)
        return request

    def _check_corrid_type(self, corrid: CorrelationId) -> None:
        control = self.policy.corrid
        if control is None:
            return
        if isinstance(corrid, str) and control.data_type != mc.TYPE_STRING:
            given = "BYTES"
        elif isinstance(corrid, int) and control.data_type not in _INTEGER_CORRID_TYPES:
            given = "UINT64"
        else:
            return
        raise invalid(
            f"sequence batching control '{control.name}' data-type is '{given}', but model '{self.model_name}'"
            f" expects '{datatypes.name_of_config(control.data_type)}'"
        )

    async def wait(self, request: SequenceRequest) -> dict[str, np.ndarray]:
        try:
            return await request.future
        except asyncio.CancelledError:
            # The client went away: a request still queued is skipped, never run (its END, if it
            # has one, still ends the sequence).
            if request.queued:
                request.queued = False
                request.result = unavailable("the request was cancelled")
                self._finish(request)
            raise

    def _finish(self, request: SequenceRequest) -> None:
        self.stats.pending -= 1
        if self.policy.preserve_ordering and request.seq is not None:
            self._order.release(request)
        else:
            resolve(request)

    # -- slots --------------------------------------------------------------------------------
    def _assign(self, sequence: Sequence, free: tuple[int, int]) -> None:
        index, instance = free
        slot = self.slots[instance][index]
        slot.sequence = sequence
        sequence.slot = slot
        sequence.last_ns = self.clock()  # idle time counts from when it holds a slot
        while sequence.waiting:
            self._queue(slot, sequence.waiting.popleft())

    def _queue(self, slot: Slot, request: SequenceRequest) -> None:
        # Answers keep the order in which requests reach the slots (not the backlog, whose
        # requests wait for requests after them to end their sequences).
        request.seq = self._arrivals
        self._arrivals += 1
        slot.queue.append(request)
        self._wake[slot.instance].set()

    def _release(self, slot: Slot) -> None:
        """The slot's sequence ended (or idled out): the oldest backlogged sequence takes it."""
        if slot.sequence is not None:
            slot.sequence.slot = None
        slot.sequence = None
        if self.backlog:
            self._assign(self.backlog.popleft(), (slot.index, slot.instance))
        else:
            heapq.heappush(self._free, (slot.index, slot.instance))

    def reap(self) -> list[CorrelationId]:
        """Free the slots of sequences idle longer than max_sequence_idle_microseconds (by the
        clock); a later request of such a sequence must start it again. Returns their ids."""
        now = self.clock()
        reaped = [s for s in self.active.values() if self._idle_too_long(s, now)]
        for sequence in reaped:
            self._reap(sequence)
        for sequence in [s for s in self.backlog if s.expires_ns is not None and s.expires_ns <= now]:
            self.backlog.remove(sequence)
            if self.active.get(sequence.corrid) is sequence:
                del self.active[sequence.corrid]
            while sequence.waiting:
                r = sequence.waiting.popleft()
                if r.queued:
                    r.queued = False
                    r.result = unavailable("timeout of the corresponding sequence has been expired")
                    self.stats.record_failure(time.monotonic_ns() - r.enqueued_ns)
                    self._finish(r)
        return [s.corrid for s in reaped]

    def _idle_too_long(self, sequence: Sequence, now: int) -> bool:
        slot = sequence.slot  # backlogged sequences wait for a slot; they never idle out
        return slot is not None and not slot.queue and not slot.busy and now - sequence.last_ns > self.policy.idle_ns

    def _reap(self, sequence: Sequence) -> None:
        log.info(
            "sequence %s of model '%s' exceeded max sequence idle; its slot is released", sequence.corrid, self.model_name
        )
        del self.active[sequence.corrid]
        assert sequence.slot is not None
        self._release(sequence.slot)

    async def _reap_forever(self) -> None:
        period = min(max(self.policy.idle_ns / 2e9, 0.001), 1.0)
        while True:
            await asyncio.sleep(period)
            self.reap()

    # -- execution ----------------------------------------------------------------------------
    def _heads(self, instance: int) -> list[SequenceRequest]:
        """The first queued request of each slot; requests the client gave up on are dropped
        here (an END among them releases its slot)."""
        heads = []
        for slot in self.slots[instance]:
            while slot.queue and not slot.queue[0].queued:
                dropped = slot.queue.popleft()
                if dropped.end:
                    self._release(slot)
            if slot.queue:
                heads.append(slot.queue[0])
        return heads

    async def _choose(self, instance: int) -> list[SequenceRequest]:
        """Wait for work, then pick the requests of the next execution (at most one per slot)."""
        wake = self._wake[instance]
        while True:
            heads = self._heads(instance)
            if heads:
                break
            wake.clear()
            await wake.wait()
        if not self.batching:
            return heads[:1] if self.policy.strategy == "direct" else [min(heads, key=lambda r: r.enqueued_ns)]
        policy = self.policy
        if policy.strategy == "direct":
            target = max(1, int(np.ceil(policy.minimum_slot_utilization * policy.slots)))
        else:
            target = max(policy.preferred, default=policy.slots)
        if policy.max_queue_delay_ns and len(heads) < target:
            deadline = min(r.enqueued_ns for r in heads) + policy.max_queue_delay_ns
            while len(heads) < target:
                remaining = deadline - time.monotonic_ns()
                if remaining <= 0:
                    break
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), remaining / 1e9)
                except TimeoutError:
                    pass
                heads = self._heads(instance)
        if not heads:
            return []
        if policy.strategy == "oldest":
            heads.sort(key=lambda r: r.enqueued_ns)
            heads = heads[: max(policy.preferred, default=len(heads))]
        shapes = self._shapes(heads[0])
        return [r for r in heads if self._shapes(r) == shapes]  # the others run in a later execution

    def _shapes(self, request: SequenceRequest) -> dict[str, tuple]:
        state = request.sequence.state if not request.start else None
        shapes = {k: v.shape for k, v in request.inputs.items()}
        for spec in self.policy.states:
            value = state[spec.input_name] if state is not None else spec.initial
            shapes[spec.input_name] = value.shape[1:] if state is not None and self.batching else value.shape
        return shapes

    async def _work(self, instance: int, run: RunFn) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._choose(instance)
            if not batch:
                continue
            slots = [r.sequence.slot for r in batch]
            for r, slot in zip(batch, slots):
                slot.queue.popleft()
                r.queued = False
                slot.busy = True
            rows = self._rows(slots)
            self.executions[instance] += 1
            for r, slot in zip(batch, slots):
                if r.end:  # the sequence has ended: its slot goes to the backlog (Triton does this here too)
                    slot.busy = False
                    self._release(slot)
            start = time.monotonic_ns()
            self._running += 1
            try:
                outputs, timings = await loop.run_in_executor(EXECUTION_THREADS, self._execute, run, batch, rows)
            except BaseException as e:  # the worker must survive anything a backend does
                error = e if isinstance(e, ServerError) else internal(f"model execution failed: {e}")
                end = time.monotonic_ns()
                for r, slot in zip(batch, slots):
                    slot.busy = False
                    r.result = error
                    self.stats.record_failure(end - r.enqueued_ns)
                    self._finish(r)
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            finally:
                self._running -= 1
            input_ns, infer_ns, output_ns = timings
            end = time.monotonic_ns()
            self.stats.record_execution(len(batch), input_ns, infer_ns, output_ns)
            for r, slot, row in zip(batch, slots, rows):
                result = {name: value[row : row + 1] for name, value in outputs.items()} if self.batching else outputs
                if not r.end and self.policy.states:
                    r.sequence.state = {s.input_name: result[s.output_name] for s in self.policy.states}
                if not r.end:
                    slot.busy = False
                r.result = {k: v for k, v in result.items() if k not in self.policy.state_outputs}
                self.stats.record_success(end - r.enqueued_ns, start - r.enqueued_ns, input_ns, infer_ns, output_ns)
                self._finish(r)
            if any(self._heads(instance)):
                self._wake[instance].set()

    def _rows(self, slots: list[Slot]) -> list[int]:
        """Each request's row in the batch: `direct` puts a request in the row of its slot."""
        if self.policy.strategy == "direct" and self.batching:
            return [slot.index for slot in slots]
        return list(range(len(slots)))

    def _batch_inputs(self, batch: list[SequenceRequest], rows: list[int]) -> dict[str, np.ndarray]:
        """On the instance thread: the execution's inputs, with the controls and states filled in
        (rows between the requests of a `direct` batch are padding, READY false)."""
        policy = self.policy
        count = max(rows) + 1
        by_row: dict[int, SequenceRequest] = dict(zip(rows, batch))
        template = batch[0]
        per_row: list[dict[str, np.ndarray]] = []
        for row in range(count):
            r = by_row.get(row)
            values = dict(r.inputs) if r is not None else {k: _zeros_like(v) for k, v in template.inputs.items()}
            controls = (
                (policy.start, r is not None and r.start),
                (policy.end, r is not None and r.end),
                (policy.ready, r is not None),
            )
            for control, flag in controls:
                if control is not None:
                    values[control.name] = self._control(control.dtype, control.value(flag))
            if policy.corrid is not None:
                values[policy.corrid.name] = self._control(policy.corrid.dtype, self._corrid_value(r))
            ref = r if r is not None else template
            for spec in policy.states:
                if r is not None and not r.start and r.sequence.state is not None:
                    values[spec.input_name] = r.sequence.state[spec.input_name]
                else:
                    values[spec.input_name] = self._row(_first_state(ref, spec, self.batching))
            per_row.append(values)
        if not self.batching:
            return per_row[0]
        return {name: np.concatenate([v[name] for v in per_row]) for name in per_row[0]}

    def _row(self, value: np.ndarray) -> np.ndarray:
        return value[np.newaxis] if self.batching else value

    def _control(self, dtype: np.dtype, value: Any) -> np.ndarray:
        shape = (1, 1) if self.batching else (1,)
        return np.full(shape, value, dtype=dtype)

    def _corrid_value(self, request: SequenceRequest | None) -> Any:
        corrid = request.sequence.corrid if request is not None else None
        control = self.policy.corrid
        assert control is not None
        if control.data_type == mc.TYPE_STRING:
            return (corrid if isinstance(corrid, str) else "").encode()
        return np.array(corrid or 0, dtype=np.uint64).astype(control.dtype)

    def _execute(
        self, run: RunFn, batch: list[SequenceRequest], rows: list[int]
    ) -> tuple[dict[str, np.ndarray], tuple[int, int, int]]:
        t0 = time.monotonic_ns()
        inputs = self._batch_inputs(batch, rows)
        t1 = time.monotonic_ns()
        with IN_FLIGHT.running():
            outputs = run(inputs, self.output_names)
        t2 = time.monotonic_ns()
        for r in batch:  # a traced request (core.trace) gets this execution's compute times
            if getattr(r, "trace", None) is not None:
                r.trace.compute(t0, t1, t2, t2)
        return outputs, (t1 - t0, t2 - t1, 0)

    async def close(self) -> None:
        """Finish what the slots hold, fail what waits in the backlog, then stop."""
        await asyncio.sleep(0)
        while self._running or any(s.queue for slots in self.slots for s in slots):
            await asyncio.sleep(0.005)
        self._closed = True
        for sequence in self.backlog:
            for r in sequence.waiting:
                if not r.queued:
                    continue
                r.queued = False
                r.result = unavailable(f"model '{self.model_name}' is being unloaded")
                self._finish(r)
        self.backlog.clear()
        for task in [*self._workers, self._reaper]:
            task.cancel()
        await asyncio.gather(*self._workers, self._reaper, return_exceptions=True)


def _first_state(request: SequenceRequest, spec: StateSpec, batching: bool) -> np.ndarray:
    """A state input without a batch dimension for a sequence's first request: its initial state;
    for a padding row, zeros shaped as the state of the request it pads beside."""
    state = request.sequence.state
    if request.start or state is None:
        return spec.initial
    value = state[spec.input_name]
    return _zeros_like(value[0] if batching else value)


def _zeros_like(array: np.ndarray) -> np.ndarray:
    """Padding data: zeros, or empty strings for BYTES."""
    return np.full(array.shape, b"", dtype=np.object_) if array.dtype == np.object_ else np.zeros_like(array)
