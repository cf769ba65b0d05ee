"""TorchServe metrics API (port 8082): `GET /metrics[?name[]=...]` in Prometheus text format.

`ts_inference_requests_total`, `ts_inference_latency_microseconds` and
`ts_queue_latency_microseconds`, labelled `model_name`, `model_version`, `hostname` as in
TorchServe. The numbers are the core's statistics (core/stats.py) read at scrape time, so they
count every request a model served, from any front end; `model_version` is the archive's
version ("1.0"), or the version number of a repository model (TorchServe writes "default" for
requests that named no version).
"""

from __future__ import annotations

import socket
from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from triserve.core.dataplane import DataPlane
from triserve.core.stats import ModelStats
from triserve.options import ServerOptions
from triserve.protocols.torchserve.forms import EXCEPTION_HANDLERS
from triserve.protocols.transport.http import HTTPFrontEnd
from triserve.protocols.transport.prometheus import CONTENT_TYPE, exposition

# sample name -> (family name for prometheus-client, HELP, value)
METRICS = {
    "ts_inference_requests_total": ("ts_inference_requests", "Torchserve prometheus counter metric with unit: Count",
                                    lambda s: s.success.count + s.fail.count),
    "ts_inference_latency_microseconds": ("ts_inference_latency_microseconds",
                                          "Torchserve prometheus counter metric with unit: Microseconds",
                                          lambda s: (s.success.ns + s.fail.ns) / 1000),
    "ts_queue_latency_microseconds": ("ts_queue_latency_microseconds",
                                      "Torchserve prometheus counter metric with unit: Microseconds",
                                      lambda s: s.queue.ns / 1000),
}
# Counters whose samples carry no `_total` suffix.
_EXACT = [sample for sample in METRICS if not sample.endswith("_total")]


class TorchServeCollector(Collector):
    def __init__(self, dataplane: DataPlane, names: set[str] | None = None) -> None:
        self.dataplane = dataplane
        self.names = names
        self.hostname = socket.gethostname()

    def _version(self, stats: ModelStats) -> str:
        if self.dataplane.is_registered(stats.name):
            registration = self.dataplane.registrations(stats.name).get(stats.version)
            if registration is not None:
                return registration.version
        return str(stats.version)

    def collect(self) -> Iterator[Metric]:
        stats = [m.stats for m in self.dataplane.models()]
        for sample, (family, help_text, value) in METRICS.items():
            if self.names and sample not in self.names:
                continue
            metric = Metric(family, help_text, "counter")
            for s in stats:
                labels = {"model_name": s.name, "model_version": self._version(s), "hostname": self.hostname}
                metric.add_sample(sample, labels, value(s))
            yield metric


def metrics_app(dataplane: DataPlane) -> Starlette:
    async def metrics(request: Request) -> Response:
        names = set(request.query_params.getlist("name[]")) or None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(TorchServeCollector(dataplane, names))
        return Response(exposition(registry, _EXACT), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", metrics)], exception_handlers=EXCEPTION_HANDLERS)


def frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> HTTPFrontEnd:
    return HTTPFrontEnd(metrics_app(dataplane), options.host_of("torchserve_metrics"), port, options.http)
