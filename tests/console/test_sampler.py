import numpy as np
import pytest

from tests.console.models import console_repository
from tests.inprocess import triton_dataplane
from triserve.console.sampler import Sampler, quantile_ms
from triserve.core.types import InferRequest


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_quantile_is_the_upper_bound_of_the_bucket_it_falls_in():
    counts = [0] * 16
    counts[3] = 98  # <= 1 ms
    counts[6] = 2  # <= 10 ms
    assert quantile_ms(counts, 0.5) == 1.0
    assert quantile_ms(counts, 0.99) == 10.0
    assert quantile_ms([0] * 16, 0.5) is None


async def _infer(dataplane, name, rows):
    model = dataplane.model(name)
    await dataplane.infer(model, InferRequest({"INPUT": np.ones((rows, 5), np.float32)}))


@pytest.mark.anyio
async def test_samples_count_requests_per_second_per_model_and_in_total(tmp_path):
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        await _infer(dataplane, "scores", 1)  # before sampling began: history, not counted
        clock = Clock()
        sampler = Sampler(dataplane, clock=clock, wall=clock)
        first = sampler.sample()
        assert first["total"]["requests"] == 0
        for _ in range(4):
            await _infer(dataplane, "scores", 2)
        clock.now += 2.0
        second = sampler.sample()
        scores = second["models"]["scores"]
        assert scores["requests"] == 4
        assert scores["requests_per_s"] == 2.0
        assert scores["p50_ms"] is not None and scores["p99_ms"] >= scores["p50_ms"]
        assert scores["queue_ms"] is not None
        assert scores["queue_depth"] == 0
        assert sum(scores["batch_sizes"].values()) == scores["executions"] >= 1
        assert sum(int(s) * c for s, c in scores["batch_sizes"].items()) == 8  # 4 requests of 2 rows
        assert second["models"]["simple"]["requests"] == 0
        assert second["total"]["requests"] == 4
        clock.now += 1.0
        third = sampler.sample()
        assert third["total"]["requests"] == 0  # nothing new
        assert sampler.totals()["scores"] == 4
        assert [s["time"] for s in sampler.history(since=first["time"])] == [second["time"], third["time"]]


@pytest.mark.anyio
async def test_history_keeps_only_the_newest_samples(tmp_path):
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        clock = Clock()
        sampler = Sampler(dataplane, keep=3, clock=clock, wall=clock)
        for _ in range(5):
            clock.now += 1
            sampler.sample()
        assert [s["time"] for s in sampler.history()] == [103.0, 104.0, 105.0]
