"""Traffic history for the console: the core's statistics sampled once a second, kept in memory.

Each sample holds, per model (all its ready versions together) and in total, what happened since
the previous sample: requests/s, failures/s, p50/p99 request latency (from the latency histogram's
buckets), mean queue time, the queue depth (requests queued or running) and the batch sizes the
model executed (a histogram). Only the data plane's ready models are read.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Callable

from triserve.core.dataplane import DataPlane
from triserve.core.stats import LATENCY_BUCKETS_US

KEEP_SECONDS = 300  # five minutes of 1-s samples


def _snapshot(stats: Any) -> dict[str, Any]:
    return {
        "success": stats.success.count,
        "fail": stats.fail.count,
        "queue_count": stats.queue.count,
        "queue_ns": stats.queue.ns,
        "success_ns": stats.success.ns,
        "histogram": list(stats.request_histogram.counts),
        "batches": {size: d[0].count for size, d in stats.batches.items()},
        "pending": stats.pending,
        "executions": stats.execution_count,
    }


def quantile_ms(counts: list[int], q: float) -> float | None:
    """The q-quantile of a bucketed latency histogram, in ms: the upper bound of the bucket it falls
    in (the last bucket, above every bound, reports the highest bound). None for no requests."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        if seen >= rank and count:
            bound = LATENCY_BUCKETS_US[min(i, len(LATENCY_BUCKETS_US) - 1)]
            return bound / 1000
    return LATENCY_BUCKETS_US[-1] / 1000


def _delta(now: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    if before is None:
        before = {"success": 0, "fail": 0, "queue_count": 0, "queue_ns": 0, "success_ns": 0,
                  "histogram": [0] * len(now["histogram"]), "batches": {}, "executions": 0}
    if now["success"] < before["success"] or now["fail"] < before["fail"]:
        return _delta(now, None)  # counts went back: count from zero
    return {
        "success": now["success"] - before["success"],
        "fail": now["fail"] - before["fail"],
        "queue_count": now["queue_count"] - before["queue_count"],
        "queue_ns": now["queue_ns"] - before["queue_ns"],
        "success_ns": now["success_ns"] - before["success_ns"],
        "histogram": [a - b for a, b in zip(now["histogram"], before["histogram"])],
        "batches": {s: c - before["batches"].get(s, 0) for s, c in now["batches"].items() if c - before["batches"].get(s, 0) > 0},
        "pending": now["pending"],
        "executions": now["executions"] - before["executions"],
    }


def _add(into: dict[str, Any], part: dict[str, Any]) -> None:
    for key in ("success", "fail", "queue_count", "queue_ns", "success_ns", "pending", "executions"):
        into[key] = into.get(key, 0) + part[key]
    into["histogram"] = [a + b for a, b in zip(into.get("histogram") or [0] * len(part["histogram"]), part["histogram"])]
    batches = into.setdefault("batches", {})
    for size, count in part["batches"].items():
        batches[size] = batches.get(size, 0) + count


def _point(d: dict[str, Any], seconds: float) -> dict[str, Any]:
    seconds = seconds if seconds > 0 else 1.0
    return {
        "requests": d["success"] + d["fail"],
        "requests_per_s": round((d["success"] + d["fail"]) / seconds, 3),
        "failures_per_s": round(d["fail"] / seconds, 3),
        "p50_ms": quantile_ms(d["histogram"], 0.5),
        "p99_ms": quantile_ms(d["histogram"], 0.99),
        "mean_ms": round(d["success_ns"] / d["success"] / 1e6, 3) if d["success"] else None,
        "queue_ms": round(d["queue_ns"] / d["queue_count"] / 1e6, 3) if d["queue_count"] else None,
        "queue_depth": d["pending"],
        "executions": d["executions"],
        "batch_sizes": {str(s): c for s, c in sorted(d["batches"].items())},
    }


class Sampler:
    """Samples the data plane's statistics; `sample()` once per interval (run() does it forever).
    `clock` (seconds, monotonic) and `wall` (epoch seconds, shown on charts) are injectable."""

    def __init__(
        self,
        dataplane: DataPlane,
        interval: float = 1.0,
        keep: int = KEEP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.dataplane = dataplane
        self.interval = interval
        self.samples: deque[dict[str, Any]] = deque(maxlen=keep)
        self.clock = clock
        self.wall = wall
        self._previous: dict[tuple[str, int], tuple[int, dict[str, Any]]] = {}
        self._last_time: float | None = None
        self._totals: dict[str, int] = {}  # requests counted per model since sampling began
        self._task: asyncio.Task | None = None

    def sample(self) -> dict[str, Any]:
        now = self.clock()
        seconds = now - self._last_time if self._last_time is not None else self.interval
        self._last_time = now
        per_model: dict[str, dict[str, Any]] = {}
        current: dict[tuple[str, int], tuple[int, dict[str, Any]]] = {}
        for model in self.dataplane.models():
            key = (model.name, model.version)
            snap = _snapshot(model.stats)
            old = self._previous.get(key)
            if old is not None and old[0] == id(model.stats):
                before: dict[str, Any] | None = old[1]
            elif not self.samples:
                before = snap  # counted before sampling began: history, not this second's traffic
            else:
                before = None  # a version loaded since the last sample: all its counts are new
            current[key] = (id(model.stats), snap)
            delta = _delta(snap, before)
            _add(per_model.setdefault(model.name, {}), delta)
        self._previous = current
        total: dict[str, Any] = {}
        for d in per_model.values():
            _add(total, d)
        models = {name: _point(d, seconds) for name, d in sorted(per_model.items())}
        for name, point in models.items():
            self._totals[name] = self._totals.get(name, 0) + point["requests"]
        point = {
            "time": round(self.wall(), 3),
            "seconds": round(seconds, 3),
            "total": _point(total, seconds) if total else _point(_empty(), seconds),
            "models": models,
        }
        self.samples.append(point)
        return point

    def history(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["time"] > since]

    def totals(self) -> dict[str, int]:
        return dict(self._totals)

    def start(self) -> None:
        """Sample every interval in the running event loop (once: later calls do nothing)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


def _empty() -> dict[str, Any]:
    return {"success": 0, "fail": 0, "queue_count": 0, "queue_ns": 0, "success_ns": 0,
            "histogram": [0] * (len(LATENCY_BUCKETS_US) + 1), "batches": {}, "pending": 0, "executions": 0}
