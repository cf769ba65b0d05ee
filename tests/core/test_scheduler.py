"""The scheduler on its own: batching, ordering, queue limits, timeouts, priorities, cancellation.

The model here is a gate: each execution waits until the test opens it, so the test decides
when every execution ends and every interleaving is chosen, not timed. The scheduler code under
test is the one the server runs.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triserve.backends import EXECUTION
from triserve.core.scheduler import IN_FLIGHT, BatchingPolicy, Scheduler
from triserve.core.stats import ModelStats
from triserve.errors import ServerError

pytestmark = pytest.mark.anyio


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse('name: "m" max_batch_size: 8 ' + text, mc.ModelConfig())


class Gate:
    """y = 2x. An execution starts (the test can await that, with its batch) and then waits until
    the test opens the gate for the first value of its batch."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self._loop = asyncio.get_running_loop()
        self._started: asyncio.Queue[list[float]] = asyncio.Queue()
        self._opened: set[float] = set()
        self._condition = threading.Condition()

    def __call__(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        values = x[:, 0].tolist()
        self._loop.call_soon_threadsafe(self._started.put_nowait, values)
        with self._condition:  # the timeout only bounds a test that failed before opening the gate
            self.batches.append(values)
            self._condition.notify_all()
            self._condition.wait_for(lambda: values[0] in self._opened, timeout=60)
        return {"y": x * 2}

    def open(self, *values: float) -> None:
        """Let the executions whose batch starts with one of `values` finish (now or when they come)."""
        with self._condition:
            self._opened.update(values)
            self._condition.notify_all()

    def wait_started(self, count: int) -> bool:
        """Block this thread (the event loop's too, when called there) until `count` executions started."""
        with self._condition:
            return self._condition.wait_for(lambda: len(self.batches) >= count, timeout=60)

    async def started(self) -> list[float]:
        """The batch of the next execution to start."""
        return await self._started.get()


def make(text: str, instances: int = 1) -> tuple[Scheduler, Gate]:
    gate = Gate()
    cfg = config(text)
    scheduler = Scheduler("m", [gate] * instances, ["y"], BatchingPolicy.from_config(cfg, cfg.max_batch_size), ModelStats("m", 1))
    return scheduler, gate


def x(value: float, batch: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((batch, 1), value, np.float32)}


async def submit(scheduler: Scheduler, value: float, **kwargs) -> float:
    out = await scheduler.submit(x(value), 1, **kwargs)
    return float(out["y"][0, 0])


async def settle() -> None:
    """Let every task that is ready run until it waits (new requests reach the queue)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def until(condition) -> None:
    async with asyncio.timeout(60):  # only bounds a broken scheduler
        while not condition():
            await asyncio.sleep(0.001)


async def test_dynamic_batching_joins_queued_requests_and_splits_answers():
    scheduler, gate = make("dynamic_batching { }")
    first = asyncio.ensure_future(submit(scheduler, 50))
    assert await gate.started() == [50]  # occupies the only instance
    rest = [asyncio.ensure_future(submit(scheduler, 1 + i / 100)) for i in range(8)]
    await settle()
    gate.open(50, 1)
    results = await asyncio.gather(first, *rest)
    await scheduler.close()
    np.testing.assert_allclose(results, [100.0] + [2 * (1 + i / 100) for i in range(8)], rtol=1e-6)
    assert [len(b) for b in gate.batches] == [1, 8]
    assert scheduler.stats.inference_count == 9 and scheduler.stats.execution_count == 2
    assert [size for size in scheduler.stats.batches] == [1, 8]


async def test_without_dynamic_batching_requests_run_alone():
    scheduler, gate = make("")
    gate.open(5)
    await asyncio.gather(*(submit(scheduler, 5) for _ in range(4)))
    await scheduler.close()
    assert [len(b) for b in gate.batches] == [1, 1, 1, 1]


async def test_max_queue_delay_waits_for_a_preferred_batch():
    # A delay far longer than the test: the batcher waits for the fourth request, however slow the machine.
    scheduler, gate = make("dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }")
    gate.open(1)
    tasks = []
    for _ in range(3):
        tasks.append(asyncio.ensure_future(submit(scheduler, 1)))
        await settle()  # trickle in: the batcher waits instead of running one at a time
    assert gate.batches == []
    tasks.append(asyncio.ensure_future(submit(scheduler, 1)))
    assert await gate.started() == [1, 1, 1, 1]
    await asyncio.gather(*tasks)
    await scheduler.close()
    assert [len(b) for b in gate.batches] == [4]


async def test_max_queue_delay_runs_a_partial_batch_when_it_expires():
    scheduler, gate = make("dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 1000 }")
    gate.open(1)
    assert await submit(scheduler, 1) == 2.0
    await scheduler.close()
    assert gate.batches == [[1.0]]


@pytest.mark.parametrize("preserve", [False, True])
async def test_preserve_ordering(preserve):
    scheduler, gate = make(f"dynamic_batching {{ preserve_ordering: {str(preserve).lower()} }}", instances=2)
    done = []

    async def one(value):
        await submit(scheduler, value)
        done.append(value)

    slow = asyncio.ensure_future(one(80))  # first in
    assert await gate.started() == [80]
    fast = asyncio.ensure_future(one(1))  # second in, on the other instance
    assert await gate.started() == [1]
    gate.open(1)  # the second finishes first
    await until(lambda: scheduler.stats.execution_count == 1)
    await settle()
    assert done == ([] if preserve else [1])  # preserved: held back until the first is answered
    gate.open(80)
    await asyncio.gather(slow, fast)
    await scheduler.close()
    assert done == ([80, 1] if preserve else [1, 80])


async def test_full_queue_is_rejected_with_tritons_message():
    scheduler, gate = make("dynamic_batching { default_queue_policy { max_queue_size: 2 } }")
    busy = asyncio.ensure_future(submit(scheduler, 60))
    assert await gate.started() == [60]
    queued = [asyncio.ensure_future(submit(scheduler, 1)) for _ in range(2)]
    await settle()
    with pytest.raises(ServerError) as e:
        await submit(scheduler, 1)
    gate.open(60, 1)
    results = await asyncio.gather(busy, *queued)
    await scheduler.close()
    assert e.value.code.name == "UNAVAILABLE" and "exceeds maximum queue size" in e.value.message
    assert results == [120.0, 2.0, 2.0]


async def test_timeout_reject_and_request_override():
    scheduler, gate = make(
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 60000000 allow_timeout_override: true } }"
    )
    busy = asyncio.ensure_future(submit(scheduler, 100))
    assert await gate.started() == [100]
    with pytest.raises(ServerError) as e:
        await submit(scheduler, 1, timeout_us=20_000)  # expires while the only instance is busy
    patient = asyncio.ensure_future(submit(scheduler, 3))  # the 60 s default is long enough
    gate.open(100, 3)
    assert await patient == 6.0
    await busy
    await scheduler.close()
    assert "timeout" in e.value.message.lower()
    assert [1.0] not in gate.batches  # the timed-out request never ran


async def test_timeout_delay_moves_a_request_behind_the_others():
    scheduler, gate = make(
        "dynamic_batching { preferred_batch_size: [ 1 ] default_queue_policy { timeout_action: DELAY allow_timeout_override: true } }"
    )
    busy = asyncio.ensure_future(submit(scheduler, 60))
    assert await gate.started() == [60]
    # times out while queued: delayed behind later requests, not rejected
    late = asyncio.ensure_future(submit(scheduler, 7, timeout_us=10_000))
    await until(lambda: len(scheduler.queue.delayed) == 1)
    others = [asyncio.ensure_future(submit(scheduler, 2)) for _ in range(2)]
    await settle()
    gate.open(60, 7, 2)
    results = await asyncio.gather(busy, late, *others)
    await scheduler.close()
    assert results == [120.0, 14.0, 4.0, 4.0]
    assert gate.batches[-1] == [7.0]  # ran last


async def test_priority_levels():
    scheduler, gate = make("dynamic_batching { preferred_batch_size: [ 1 ] priority_levels: 2 default_priority_level: 2 }")
    busy = asyncio.ensure_future(submit(scheduler, 40))
    assert await gate.started() == [40]
    low = asyncio.ensure_future(submit(scheduler, 3))  # default level 2
    await settle()
    high = asyncio.ensure_future(submit(scheduler, 4, priority=1))
    await settle()
    gate.open(40, 3, 4)
    await asyncio.gather(busy, low, high)
    await scheduler.close()
    assert gate.batches[1:] == [[4.0], [3.0]]


async def test_a_cancelled_queued_request_never_runs():
    scheduler, gate = make("")
    busy = asyncio.ensure_future(submit(scheduler, 40))
    assert await gate.started() == [40]
    gone = asyncio.ensure_future(submit(scheduler, 9))
    await settle()
    gone.cancel()  # the client went away
    await settle()
    gate.open(40, 9, 1)
    await busy
    await submit(scheduler, 1)
    await scheduler.close()
    assert [9.0] not in gate.batches and scheduler.stats.pending == 0


async def test_a_failing_model_answers_every_request_with_an_error_and_keeps_serving():
    calls = []

    def flaky(inputs, outputs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {"y": inputs["x"] * 2}

    cfg = config("")
    scheduler = Scheduler("m", [flaky], ["y"], BatchingPolicy.from_config(cfg, 8), ModelStats("m", 1))
    with pytest.raises(ServerError) as e:
        await submit(scheduler, 1)
    ok = await submit(scheduler, 2)
    await scheduler.close()
    assert e.value.code.name == "INTERNAL" and "boom" in e.value.message
    assert ok == 4.0 and scheduler.stats.fail.count == 1 and scheduler.stats.success.count == 1


async def test_a_named_signatures_request_runs_alone_with_its_own_outputs():
    """A request naming a model's signature (Model.infer_signature) is never joined into a batch,
    neither behind a plain request nor with one behind it, and runs with its signature and outputs."""
    gate = Gate()
    calls: list[tuple[str | None, list[str]]] = []

    def run(inputs: dict[str, np.ndarray], outputs: list[str], signature: str | None = None) -> dict[str, np.ndarray]:
        calls.append((signature, outputs))
        return gate(inputs, outputs) if signature is None else {"z": inputs["x"] * 3}

    cfg = config("dynamic_batching { }")
    scheduler = Scheduler("m", [run], ["y"], BatchingPolicy.from_config(cfg, cfg.max_batch_size), ModelStats("m", 1))
    first = asyncio.ensure_future(submit(scheduler, 50))
    assert await gate.started() == [50]  # occupies the only instance while the others queue
    before = asyncio.ensure_future(submit(scheduler, 2))
    await settle()
    named = scheduler.enqueue(x(1), 0, signature="triple", outputs=["z"])
    after = asyncio.ensure_future(submit(scheduler, 3))
    await settle()
    gate.open(50, 2, 3)
    assert await asyncio.gather(first, before, after) == [100.0, 4.0, 6.0]
    np.testing.assert_array_equal((await scheduler.wait(named))["z"], [[3.0]])
    await scheduler.close()
    assert gate.batches == [[50], [2], [3]]
    assert calls == [(None, ["y"]), (None, ["y"]), ("triple", ["z"]), (None, ["y"])]


class AloneGate(Gate):
    """A Gate that records, for each execution, whether it ran alone."""

    def __init__(self) -> None:
        super().__init__()
        self.alone: list[bool] = []

    def __call__(self, inputs, outputs):
        self.alone.append(EXECUTION.alone)
        return super().__call__(inputs, outputs)


async def quiet(scheduler: Scheduler, gate: AloneGate) -> None:
    """One execution that nothing overlaps: what ran before (other tests' executions) is forgotten."""
    gate.open(0)
    await submit(scheduler, 0)
    assert await gate.started() == [0]
    gate.batches.clear()
    gate.alone.clear()


async def test_an_execution_is_alone_only_while_no_other_runs_and_none_overlapped_the_last():
    gate = AloneGate()
    cfg = config("")
    scheduler = Scheduler("m", [gate] * 2, ["y"], BatchingPolicy.from_config(cfg, 8), ModelStats("m", 1))
    await quiet(scheduler, gate)
    first = asyncio.ensure_future(submit(scheduler, 1))
    assert await gate.started() == [1]
    second = asyncio.ensure_future(submit(scheduler, 2))  # the other instance, while the first still runs
    assert await gate.started() == [2]
    gate.open(1, 2)
    await asyncio.gather(first, second)
    gate.open(3, 4)
    third = await submit(scheduler, 3)  # nothing else runs now, but the last to end was overlapped
    fourth = await submit(scheduler, 4)  # the third had the machine to itself
    await scheduler.close()
    assert (third, fourth) == (6.0, 8.0)
    assert gate.alone == [True, False, False, True]
    assert IN_FLIGHT.count == 0 and EXECUTION.alone is False


async def test_an_execution_with_requests_queued_behind_it_does_not_run_alone():
    gate = AloneGate()
    cfg = config("")
    scheduler = Scheduler("m", [gate], ["y"], BatchingPolicy.from_config(cfg, 8), ModelStats("m", 1))
    await quiet(scheduler, gate)
    first = asyncio.ensure_future(submit(scheduler, 1))
    assert await gate.started() == [1]
    rest = [asyncio.ensure_future(submit(scheduler, v)) for v in (2, 3)]
    await settle()
    gate.open(1, 2, 3)
    assert await asyncio.gather(first, *rest) == [2.0, 4.0, 6.0]
    await scheduler.close()
    assert gate.alone == [True, False, True]  # the second had the third waiting; the third had nothing behind it


async def test_a_worker_takes_its_next_batch_without_the_event_loop():
    scheduler, gate = make("")
    tasks = [asyncio.ensure_future(submit(scheduler, v)) for v in (1, 2, 3)]
    await settle()
    gate.open(1, 2)
    # The event loop is held here, blocked on the gate: the three executions still start, one
    # after another, on the instance's thread.
    assert gate.wait_started(3)
    gate.open(3)
    assert await asyncio.gather(*tasks) == [2.0, 4.0, 6.0]
    await scheduler.close()
    assert gate.batches == [[1.0], [2.0], [3.0]]


async def test_a_traced_request_gets_its_compute_times_though_a_worker_runs_it_at_once():
    from triserve.core.trace import Trace

    scheduler, gate = make("")
    gate.open(1)
    trace = Trace(1)
    pending = scheduler.enqueue(x(1), 1, trace=trace)
    # The event loop is held here: the instance's worker runs the request on its own thread
    # before anything else happens on the loop.
    assert gate.wait_started(1)
    await scheduler.wait(pending)
    await scheduler.close()
    assert [name for name, _ in trace.timestamps] == ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
                                                       "COMPUTE_END"]
