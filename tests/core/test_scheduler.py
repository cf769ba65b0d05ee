"""The scheduler on its own: batching, ordering, queue limits, timeouts, priorities, cancellation.

The model here is a numpy function that takes a chosen time, so that every interleaving is
deterministic; the scheduler code under test is the one the server runs.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.scheduler import BatchingPolicy, Scheduler
from triserve.core.stats import ModelStats
from triserve.errors import ServerError


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse('name: "m" max_batch_size: 8 ' + text, mc.ModelConfig())


class SlowDouble:
    """y = 2x; each run sleeps for the largest value of x in milliseconds (GIL released)."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []

    def __call__(self, inputs, outputs):
        x = inputs["x"]
        self.batches.append(x[:, 0].tolist())
        time.sleep(float(x.max()) / 1000)
        return {"y": x * 2}


def make(text: str, instances: int = 1) -> tuple[Scheduler, SlowDouble]:
    model = SlowDouble()
    cfg = config(text)
    scheduler = Scheduler("m", [model] * instances, ["y"], BatchingPolicy.from_config(cfg, cfg.max_batch_size), ModelStats("m", 1))
    return scheduler, model


def x(value: float, batch: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((batch, 1), value, np.float32)}


async def submit(scheduler: Scheduler, value: float, **kwargs) -> float:
    out = await scheduler.submit(x(value), 1, **kwargs)
    return float(out["y"][0, 0])


def test_dynamic_batching_joins_queued_requests_and_splits_answers():
    async def main():
        scheduler, model = make("dynamic_batching { }")
        first = asyncio.ensure_future(submit(scheduler, 50))  # occupies the only instance
        await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(submit(scheduler, 1 + i / 100)) for i in range(8)]
        results = await asyncio.gather(first, *rest)
        await scheduler.close()
        return results, model.batches, scheduler.stats

    results, batches, stats = asyncio.run(main())
    np.testing.assert_allclose(results, [100.0] + [2 * (1 + i / 100) for i in range(8)], rtol=1e-6)
    assert [len(b) for b in batches] == [1, 8]
    assert stats.inference_count == 9 and stats.execution_count == 2
    assert [size for size in stats.batches] == [1, 8]


def test_without_dynamic_batching_requests_run_alone():
    async def main():
        scheduler, model = make("")
        await asyncio.gather(*(submit(scheduler, 5) for _ in range(4)))
        await scheduler.close()
        return model.batches

    assert [len(b) for b in asyncio.run(main())] == [1, 1, 1, 1]


def test_max_queue_delay_waits_for_a_preferred_batch():
    async def main():
        scheduler, model = make("dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 200000 }")
        tasks = []
        for i in range(4):
            tasks.append(asyncio.ensure_future(submit(scheduler, 1)))
            await asyncio.sleep(0.02)  # trickle in: the batcher waits instead of running one at a time
        await asyncio.gather(*tasks)
        await scheduler.close()
        return model.batches

    assert [len(b) for b in asyncio.run(main())] == [4]


@pytest.mark.parametrize("preserve", [False, True])
def test_preserve_ordering(preserve):
    async def main():
        scheduler, _ = make(f"dynamic_batching {{ preserve_ordering: {str(preserve).lower()} }}", instances=2)
        done = []

        async def one(value):
            await submit(scheduler, value)
            done.append(value)

        slow = asyncio.ensure_future(one(80))  # first in, slow
        await asyncio.sleep(0.005)
        fast = asyncio.ensure_future(one(1))  # second in, fast, on the other instance
        await asyncio.gather(slow, fast)
        await scheduler.close()
        return done

    assert asyncio.run(main()) == ([80, 1] if preserve else [1, 80])


def test_full_queue_is_rejected_with_tritons_message():
    async def main():
        scheduler, _ = make("dynamic_batching { default_queue_policy { max_queue_size: 2 } }")
        busy = asyncio.ensure_future(submit(scheduler, 60))
        await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(submit(scheduler, 1)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ServerError) as e:
            await submit(scheduler, 1)
        results = await asyncio.gather(busy, *queued)
        await scheduler.close()
        return e.value, results

    error, results = asyncio.run(main())
    assert error.code.name == "UNAVAILABLE" and "exceeds maximum queue size" in error.message
    assert results == [120.0, 2.0, 2.0]


def test_timeout_reject_and_request_override():
    async def main():
        scheduler, model = make(
            "dynamic_batching { default_queue_policy { default_timeout_microseconds: 1000000 allow_timeout_override: true } }"
        )
        busy = asyncio.ensure_future(submit(scheduler, 100))
        await asyncio.sleep(0.01)
        with pytest.raises(ServerError) as e:
            await submit(scheduler, 1, timeout_us=20_000)  # shorter than the wait for the busy instance
        patient = await submit(scheduler, 3)  # the 1 s default is long enough
        await busy
        await scheduler.close()
        return e.value, patient, model.batches

    error, patient, batches = asyncio.run(main())
    assert "timeout" in error.message.lower()
    assert patient == 6.0
    assert [1.0] not in batches  # the timed-out request never ran


def test_timeout_delay_moves_a_request_behind_the_others():
    async def main():
        scheduler, model = make(
            "dynamic_batching { preferred_batch_size: [ 1 ] default_queue_policy { timeout_action: DELAY allow_timeout_override: true } }"
        )
        busy = asyncio.ensure_future(submit(scheduler, 60))
        await asyncio.sleep(0.005)
        # times out while queued: delayed behind later requests, not rejected
        late = asyncio.ensure_future(submit(scheduler, 7, timeout_us=10_000))
        await asyncio.sleep(0.03)
        others = [asyncio.ensure_future(submit(scheduler, 2)) for _ in range(2)]
        results = await asyncio.gather(busy, late, *others)
        await scheduler.close()
        return results, model.batches

    results, batches = asyncio.run(main())
    assert results == [120.0, 14.0, 4.0, 4.0]
    assert batches[-1] == [7.0]  # ran last


def test_priority_levels():
    async def main():
        scheduler, model = make("dynamic_batching { preferred_batch_size: [ 1 ] priority_levels: 2 default_priority_level: 2 }")
        busy = asyncio.ensure_future(submit(scheduler, 40))
        await asyncio.sleep(0.005)
        low = asyncio.ensure_future(submit(scheduler, 3))  # default level 2
        high = asyncio.ensure_future(submit(scheduler, 4, priority=1))
        await asyncio.gather(busy, low, high)
        await scheduler.close()
        return model.batches

    assert asyncio.run(main())[1:] == [[4.0], [3.0]]


def test_a_cancelled_queued_request_never_runs():
    async def main():
        scheduler, model = make("")
        busy = asyncio.ensure_future(submit(scheduler, 40))
        await asyncio.sleep(0.005)
        gone = asyncio.ensure_future(submit(scheduler, 9))
        await asyncio.sleep(0.005)
        gone.cancel()  # the client went away
        await busy
        await submit(scheduler, 1)
        await scheduler.close()
        return model.batches, scheduler.stats.pending

    batches, pending = asyncio.run(main())
    assert [9.0] not in batches and pending == 0


def test_a_failing_model_answers_every_request_with_an_error_and_keeps_serving():
    async def main():
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
        return e.value, ok, scheduler.stats

    error, ok, stats = asyncio.run(main())
    assert error.code.name == "INTERNAL" and "boom" in error.message
    assert ok == 4.0 and stats.fail.count == 1 and stats.success.count == 1
