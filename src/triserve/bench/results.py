"""One measurement's throughput and latency, and a section's markdown table of served/raw ratios."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from triserve.bench.cpu import CPUPerCall


# A measurement runs for the seconds asked and until at least this many calls completed in it: on
# a busy machine a short window can otherwise pass with no call finished, and read as 0 images/s.
MIN_COMPLETED = 5


@dataclass
class Result:
    label: str
    images_per_s: float
    p50_ms: float
    p99_ms: float
    cpu: CPUPerCall | None = field(default=None, compare=False)  # where a served call's CPU went

    def ratio(self, raw: Result) -> float:
        return self.images_per_s / raw.images_per_s if raw.images_per_s else float("nan")


def result(label: str, latencies: list[float], elapsed: float, images_per_call: int = 1) -> Result:
    """From the latencies (seconds) of the calls completed in `elapsed` seconds; none completed: 0 images/s."""
    if not latencies:
        return Result(label, 0.0, float("nan"), float("nan"))
    ms = np.array(latencies) * 1000
    return Result(label, len(latencies) * images_per_call / elapsed, float(np.percentile(ms, 50)),
                  float(np.percentile(ms, 99)))


def best(results: list[Result]) -> Result:
    return max(results, key=lambda r: r.images_per_s)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def progress(r: Result) -> Result:
    """Each measurement on stderr as it finishes (a run takes minutes)."""
    print(f"  {r.label}: {r.images_per_s:.1f} images/s, p50 {r.p50_ms:.2f} ms", file=sys.stderr, flush=True)
    return r


@dataclass
class Table:
    """One section: rows of (measurement, the raw result it is divided by), notes, summary lines."""

    title: str
    rows: list[tuple[Result, Result]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    def without_throughput(self) -> list[str]:
        """Rows that measured nothing: 0 images/s or a nan, a benchmark that must fail."""
        bad = []
        for r, _ in self.rows:
            if not (r.images_per_s > 0 and np.isfinite([r.images_per_s, r.p50_ms, r.p99_ms]).all()):
                bad.append(r.label)
        return list(dict.fromkeys(bad))

    def render(self) -> str:
        lines = [f"## {self.title}", "",
                 "| measurement | images/s | p50 ms | p99 ms | / raw |", "|---|---|---|---|---|"]
        for r, raw in self.rows:
            lines.append(f"| {r.label} | {r.images_per_s:.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.ratio(raw):.2f} |")
        return "\n".join([*lines, "", *self.notes, ""])


def median_of(results: list[Result]) -> Result:
    """Rounds of one measurement as one row: the median images/s, p50 and p99 of the rounds (and
    of their CPU per call, when every round has it)."""
    cpus = [r.cpu for r in results if r.cpu is not None]
    cpu = None
    if cpus and len(cpus) == len(results):
        cpu = CPUPerCall(*(float(np.median(values)) for values in zip(
            *((c.event_loop_ms, c.other_threads_ms, c.load_generator_ms) for c in cpus))))
    return Result(results[0].label, float(np.median([r.images_per_s for r in results])),
                  float(np.median([r.p50_ms for r in results])), float(np.median([r.p99_ms for r in results])), cpu)


def median_ratio(results: list[Result], raws: list[Result]) -> float:
    """The median over rounds of each round's ratio: rows measured next to each other share the
    machine's load of that moment, so their ratio drifts less than a ratio of medians."""
    return float(np.median([r.ratio(raw) for r, raw in zip(results, raws, strict=True)]))
