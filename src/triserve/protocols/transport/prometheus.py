"""Prometheus text exposition shared by every protocol's metrics: the core's latency histograms
as buckets, and counters written under their exact names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from triserve.core.stats import LATENCY_BUCKETS_US, Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def buckets(h: Histogram) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, as prometheus-client's HistogramMetricFamily takes them."""
    out, total = [], 0
    for bound, count in zip([*map(str, LATENCY_BUCKETS_US), "+Inf"], h.counts):
        total += count
        out.append((bound, total))
    return out


def exposition(registry: CollectorRegistry, exact_counters: list[str]) -> bytes:
    """The registry's text, with `exact_counters` named as they are in HELP and TYPE lines.

    prometheus-client names every counter family `<name>_total` there; counters whose samples
    carry no such suffix (Triton's, TorchServe's latencies) must match, since scrapers pair
    HELP/TYPE lines with samples by name.
    """
    text = generate_latest(registry)
    for name in exact_counters:
        for kind in ("HELP", "TYPE"):
            text = text.replace(f"# {kind} {name}_total ".encode(), f"# {kind} {name} ".encode())
    return text
