"""Prometheus metrics with Triton's names, HELP texts and labels, on --metrics-port at /metrics.

The numbers are the same ones the statistics extension reports (core/stats.py), read at
scrape time, so the two never disagree.
"""

from __future__ import annotations

from typing import Iterator

import psutil
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from triserve.core.dataplane import DataPlane
from triserve.core.stats import ModelStats
from triserve.options import ServerOptions
from triserve.protocols.transport.http import HTTPFrontEnd
from triserve.protocols.transport.prometheus import CONTENT_TYPE, buckets, exposition

# name -> (type, HELP, value from the stats)
_MODEL_METRICS = {
    "nv_inference_request_success": ("counter", "Number of successful inference requests, all batch sizes",
                                      lambda s: s.success.count),
    "nv_inference_request_failure": ("counter", "Number of failed inference requests, all batch sizes",
                                      lambda s: s.fail.count),
    "nv_inference_count": ("counter", "Number of inferences performed (does not include cached requests)",
                           lambda s: s.inference_count),
    "nv_inference_exec_count": ("counter", "Number of model executions performed (does not include cached requests)",
                                lambda s: s.execution_count),
    "nv_inference_request_duration_us": ("counter", "Cumulative inference request duration in microseconds (includes cached requests)",
                                         lambda s: (s.success.ns + s.fail.ns) // 1000),
    "nv_inference_queue_duration_us": ("counter", "Cumulative inference queuing duration in microseconds (includes cached requests)",
                                       lambda s: s.queue.ns // 1000),
    "nv_inference_compute_input_duration_us": ("counter", "Cumulative compute input duration in microseconds (does not include cached requests)",
                                               lambda s: s.compute_input.ns // 1000),
    "nv_inference_compute_infer_duration_us": ("counter", "Cumulative compute inference duration in microseconds (does not include cached requests)",
                                               lambda s: s.compute_infer.ns // 1000),
    "nv_inference_compute_output_duration_us": ("counter", "Cumulative inference compute output duration in microseconds (does not include cached requests)",
                                                lambda s: s.compute_output.ns // 1000),
    "nv_inference_pending_request_count": ("gauge", "Instantaneous number of pending requests awaiting execution per-model.",
                                           lambda s: s.pending),
}
_HISTOGRAMS = {
    "nv_inference_request_duration_histogram_us": ("Inference request duration in microseconds, per request (histogram)",
                                                   lambda s: s.request_histogram),
    "nv_inference_queue_duration_histogram_us": ("Inference queuing duration in microseconds, per request (histogram)",
                                                 lambda s: s.queue_histogram),
}


def _labels(stats: ModelStats) -> dict[str, str]:
    return {"model": stats.name, "version": str(stats.version)}


class TritonCollector(Collector):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        psutil.cpu_percent(interval=None)  # starts the utilisation interval

    def collect(self) -> Iterator[Metric]:
        stats = [m.stats for m in self.dataplane.models()]
        for name, (kind, help_text, value) in _MODEL_METRICS.items():
            metric = Metric(name, help_text, kind)
            for s in stats:
                # add_sample keeps the exact name: Triton's counters have no _total suffix
                metric.add_sample(name, _labels(s), value(s))
            yield metric
        for name, (help_text, get) in _HISTOGRAMS.items():
            family = HistogramMetricFamily(name, help_text, labels=["model", "version"])
            for s in stats:
                h = get(s)
                family.add_metric([s.name, str(s.version)], buckets(h), h.sum_us)
            yield family
        memory = psutil.virtual_memory()
        for name, help_text, value in (
            ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", psutil.cpu_percent(interval=None) / 100),
            ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", memory.total),
            ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", memory.total - memory.available),
        ):
            metric = Metric(name, help_text, "gauge")
            metric.add_sample(name, {}, value)
            yield metric


def metrics_app(dataplane: DataPlane) -> Starlette:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TritonCollector(dataplane))

    counters = [name for name, (kind, _, _) in _MODEL_METRICS.items() if kind == "counter"]

    async def metrics(request: Request) -> Response:
        return Response(exposition(registry, counters), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", metrics)])


def frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> HTTPFrontEnd:
    return HTTPFrontEnd(metrics_app(dataplane), options.host, port, options.http)
