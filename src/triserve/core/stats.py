"""Per model-version statistics, counted as Triton counts them; every protocol's statistics and
metrics read the same numbers."""

from __future__ import annotations

import time
from bisect import bisect_left

# Request latency histogram buckets, in microseconds (Prometheus `le` values).
LATENCY_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000)


class Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


class Histogram:
    """Cumulative-ready bucket counts of one latency, in microseconds."""

    __slots__ = ("counts", "sum_us", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_US) + 1)
        self.sum_us = 0.0
        self.total = 0

    def observe(self, ns: int) -> None:
        us = ns / 1000
        self.counts[bisect_left(LATENCY_BUCKETS_US, us)] += 1
        self.sum_us += us
        self.total += 1


class ModelStats:
    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.pending = 0  # requests queued or running
        self.last: tuple[int, int, int, int, int] | None = None  # set by record_success
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.batches: dict[int, tuple[Duration, Duration, Duration]] = {}
        self.request_histogram = Histogram()
        self.queue_histogram = Histogram()

    def record_success(self, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)
        self.request_histogram.observe(total_ns)
        self.queue_histogram.observe(queue_ns)
        self.last_inference_ms = int(time.time() * 1000)
        self.last = (total_ns, queue_ns, input_ns, infer_ns, output_ns)  # the latest request (TorchServe's gauges)

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)
        self.request_histogram.observe(total_ns)
        self.last_inference_ms = int(time.time() * 1000)

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.execution_count += 1
        self.inference_count += batch_size
        durations = self.batches.get(batch_size)
        if durations is None:
            durations = self.batches[batch_size] = (Duration(), Duration(), Duration())
        durations[0].add(input_ns)
        durations[1].add(infer_ns)
        durations[2].add(output_ns)
