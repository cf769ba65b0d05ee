"""TorchServe's metrics (port 8082): the default metrics of TorchServe 0.12's ts_metrics.yaml, with
its names, dimensions and units, in TorchServe's Prometheus text (`metrics_mode=prometheus`, the
default) or written to the `ts_metrics` / `model_metrics` logs (`metrics_mode=log` in
config.properties; the metrics API then answers an empty page, as TorchServe's).

Frontend metrics (`ts_metrics`):
- counters `Requests2XX`, `Requests4XX`, `Requests5XX` {Level="Host", Hostname}: the HTTP answers
  of the TorchServe inference, management and metrics ports, by status class;
- counters `ts_inference_requests_total`, `ts_inference_latency_microseconds`,
  `ts_queue_latency_microseconds` {model_name, model_version, hostname}: every request a model
  served, from any front end (the core's statistics, read at scrape time); `model_version` is
  the archive's version ("1.0"), or the version number of a repository model;
- gauges `QueueTime` and `WorkerThreadTime` {Level="Host", Hostname} (ms): the latest request's
  time in the queue, and around the model run (its pre- and postprocessing);
  `WorkerLoadTime` {WorkerName, Level="Host", Hostname} (ms): each worker's model load, worker
  names as TorchServe's (`W-9000-<model>_<version>`);
- gauges `CPUUtilization`, `MemoryUsed`, `MemoryAvailable`, `MemoryUtilization`, `DiskUsage`,
  `DiskUtilization`, `DiskAvailable` {Level="Host", Hostname}: the host, read when scraped
  (in log mode every `metric_time_interval` seconds, default 60). The GPU gauges are written
  only where TorchServe writes them, with GPUs; triserve reads no GPU counters, so it has none.
Model metrics (`model_metrics`): gauges `HandlerTime` and `PredictionTime` {ModelName,
Level="Model", Hostname} (ms): the latest request's handler time (pre-, inference and
postprocessing) and its time from dequeue to answer.

The text is TorchServe's (its Java Prometheus client 0.x): `name{label="v",...,} 1.0`, HELP
"Torchserve prometheus <type> metric with unit: <unit>"; `?name[]=` filters families.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import logging
import os
import socket
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import psutil
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from triserve.core.dataplane import DataPlane
from triserve.core.model import Model
from triserve.core.stats import ModelStats
from triserve.options import ServerOptions
from triserve.protocols.torchserve.forms import EXCEPTION_HANDLERS
from triserve.protocols.transport.http import HTTPFrontEnd
from triserve.protocols.transport.prometheus import CONTENT_TYPE

ts_metrics_log = logging.getLogger("triserve.ts_metrics")  # TorchServe's ts_metrics.log
model_metrics_log = logging.getLogger("triserve.model_metrics")  # TorchServe's model_metrics.log

HOST = ["Level", "Hostname"]
MODEL = ["model_name", "model_version", "hostname"]


@dataclass(frozen=True)
class Spec:
    """One metric of ts_metrics.yaml: its name, type, unit and dimension names."""

    name: str
    kind: str  # counter or gauge
    unit: str
    dimensions: tuple[str, ...]


SPECS = {s.name: s for s in (
    Spec("Requests2XX", "counter", "Count", tuple(HOST)),
    Spec("Requests4XX", "counter", "Count", tuple(HOST)),
    Spec("Requests5XX", "counter", "Count", tuple(HOST)),
    Spec("ts_inference_requests_total", "counter", "Count", tuple(MODEL)),
    Spec("ts_inference_latency_microseconds", "counter", "Microseconds", tuple(MODEL)),
    Spec("ts_queue_latency_microseconds", "counter", "Microseconds", tuple(MODEL)),
    Spec("QueueTime", "gauge", "Milliseconds", tuple(HOST)),
    Spec("WorkerThreadTime", "gauge", "Milliseconds", tuple(HOST)),
    Spec("WorkerLoadTime", "gauge", "Milliseconds", ("WorkerName", *HOST)),
    Spec("CPUUtilization", "gauge", "Percent", tuple(HOST)),
    Spec("MemoryUsed", "gauge", "Megabytes", tuple(HOST)),
    Spec("MemoryAvailable", "gauge", "Megabytes", tuple(HOST)),
    Spec("MemoryUtilization", "gauge", "Percent", tuple(HOST)),
    Spec("DiskUsage", "gauge", "Gigabytes", tuple(HOST)),
    Spec("DiskUtilization", "gauge", "Percent", tuple(HOST)),
    Spec("DiskAvailable", "gauge", "Gigabytes", tuple(HOST)),
    # model_metrics (the backend's; TorchServe adds Hostname to them)
    Spec("HandlerTime", "gauge", "ms", ("ModelName", "Level", "Hostname")),
    Spec("PredictionTime", "gauge", "ms", ("ModelName", "Level", "Hostname")),
)}
HOST_METRICS = ("CPUUtilization", "MemoryUsed", "MemoryAvailable", "MemoryUtilization", "DiskUsage",
                "DiskUtilization", "DiskAvailable")
MODEL_METRICS = ("HandlerTime", "PredictionTime")

Sample = tuple[tuple[str, ...], float]  # dimension values (in the spec's order), value


def java_double(value: float) -> str:
    """Java's Double.toString, which TorchServe's Prometheus client writes: 5.0, 0.25, 1.2345E7."""
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0.0"
    if 1e-3 <= abs(value) < 1e7:
        text = repr(value)
        return text if "." in text or "e" in text else text + ".0"
    sign, digits, exponent = decimal.Decimal(repr(abs(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    mantissa = "".join(map(str, digits))
    power = exponent + len(mantissa) - 1
    fraction = mantissa[1:] or "0"
    return f"{'-' if value < 0 else ''}{mantissa[0]}.{fraction}E{power}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(families: Iterable[tuple[Spec, list[Sample]]]) -> bytes:
    """TorchServe's text format 0.0.4 (Java simpleclient 0.x)."""
    lines = []
    for spec, samples in families:
        lines.append(f"# HELP {spec.name} Torchserve prometheus {spec.kind} metric with unit: {spec.unit}")
        lines.append(f"# TYPE {spec.name} {spec.kind}")
        for values, value in samples:
            labels = "".join(f'{k}="{_escape(v)}",' for k, v in zip(spec.dimensions, values))
            lines.append(f"{spec.name}{{{labels}}} {java_double(value)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def log_line(spec: Spec, values: tuple[str, ...], value: float, timestamp: int | None = None) -> str:
    """TorchServe's log metric: `Name.Unit:value|#Dim:v,...|#hostname:h,timestamp:s`."""
    dims = ",".join(f"{k}:{v}" for k, v in zip(spec.dimensions[:-1], values[:-1]))
    stamp = int(time.time()) if timestamp is None else timestamp
    return f"{spec.name}.{spec.unit}:{java_double(value)}|#{dims}|#hostname:{values[-1]},timestamp:{stamp}"


class TorchServeMetrics:
    """One server's TorchServe metrics: the request counters its HTTP ports count, and the rest
    read from the data plane's models and the host when asked."""

    def __init__(self, dataplane: DataPlane, mode: str = "prometheus", hostname: str | None = None,
                 disk_path: str = "/") -> None:
        self.dataplane = dataplane
        self.mode = mode
        self.hostname = hostname or socket.gethostname()
        self.disk_path = disk_path
        self.requests = {"Requests2XX": 0, "Requests4XX": 0, "Requests5XX": 0}
        self._cpu = psutil.Process(os.getpid())
        psutil.cpu_percent(None)  # the first reading starts the interval the next one measures

    # -- what the front ends report --------------------------------------------------------
    def count_response(self, status: int) -> None:
        name = "Requests2XX" if 200 <= status < 300 else "Requests4XX" if 400 <= status < 500 else "Requests5XX"
        self.requests[name] += 1
        if self.mode == "log":
            ts_metrics_log.info("%s", log_line(SPECS[name], ("Host", self.hostname), 1))

    def request_served(self, model: Model, version_asked: str | None) -> None:
        """After a TorchServe prediction: in log mode, the metrics TorchServe logs per request."""
        if self.mode != "log" or model.stats.last is None:
            return
        total, queue, inputs, infer, outputs = model.stats.last
        labels = (model.name, version_asked or "default", self.hostname)
        ts_metrics_log.info("%s", log_line(SPECS["ts_inference_requests_total"], labels, 1))
        ts_metrics_log.info("%s", log_line(SPECS["ts_inference_latency_microseconds"], labels, total / 1000))
        ts_metrics_log.info("%s", log_line(SPECS["ts_queue_latency_microseconds"], labels, queue / 1000))
        ts_metrics_log.info("%s", log_line(SPECS["QueueTime"], ("Host", self.hostname), queue / 1e6))
        ts_metrics_log.info("%s", log_line(SPECS["WorkerThreadTime"], ("Host", self.hostname), (inputs + outputs) / 1e6))
        for name, ns in (("HandlerTime", inputs + infer + outputs), ("PredictionTime", total - queue)):
            model_metrics_log.info("%s", log_line(SPECS[name], (model.name, "Model", self.hostname), ns / 1e6))

    # -- reading them ------------------------------------------------------------------------
    def _version(self, stats: ModelStats) -> str:
        if self.dataplane.is_registered(stats.name):
            registration = self.dataplane.registrations(stats.name).get(stats.version)
            if registration is not None:
                return registration.version
        return str(stats.version)

    def host(self) -> dict[str, float]:
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(self.disk_path)
        mib = 1024**2
        gib = 1024**3
        return {
            "CPUUtilization": psutil.cpu_percent(None),
            "MemoryUsed": memory.used / mib,
            "MemoryAvailable": memory.available / mib,
            "MemoryUtilization": memory.percent,
            "DiskUsage": disk.used / gib,
            "DiskUtilization": disk.percent,
            "DiskAvailable": disk.free / gib,
        }

    def families(self, names: set[str] | None = None) -> list[tuple[Spec, list[Sample]]]:
        wanted: Callable[[str], bool] = (lambda n: n in names) if names else (lambda n: True)
        host = ("Host", self.hostname)
        models = self.dataplane.models()
        out: list[tuple[Spec, list[Sample]]] = []
        for name, count in self.requests.items():
            if wanted(name) and count:
                out.append((SPECS[name], [(host, float(count))]))
        per_model = {
            "ts_inference_requests_total": lambda s: s.success.count + s.fail.count,
            "ts_inference_latency_microseconds": lambda s: (s.success.ns + s.fail.ns) / 1000,
            "ts_queue_latency_microseconds": lambda s: s.queue.ns / 1000,
        }
        for name, value in per_model.items():
            if wanted(name):
                out.append((SPECS[name], [((m.name, self._version(m.stats), self.hostname), value(m.stats))
                                          for m in models]))
        served = [m for m in models if m.stats.last is not None]
        latest = max(served, key=lambda m: m.stats.last_inference_ms, default=None)
        if latest is not None and latest.stats.last is not None:
            total, queue, inputs, infer, outputs = latest.stats.last
            for name, ms in (("QueueTime", queue / 1e6), ("WorkerThreadTime", (inputs + outputs) / 1e6)):
                if wanted(name):
                    out.append((SPECS[name], [(host, ms)]))
        if wanted("WorkerLoadTime") and models:
            out.append((SPECS["WorkerLoadTime"], [
                ((f"W-{9000 + i}-{m.name}_{self._version(m.stats)}", *host), m.load_seconds * 1000)
                for m in models for i in range(m.instance_count)]))
        if any(wanted(n) for n in HOST_METRICS):
            for name, value in self.host().items():
                if wanted(name):
                    out.append((SPECS[name], [(host, value)]))
        for name in MODEL_METRICS:
            if wanted(name) and served:
                samples = []
                for m in served:
                    assert m.stats.last is not None
                    total, queue, inputs, infer, outputs = m.stats.last
                    ns = inputs + infer + outputs if name == "HandlerTime" else total - queue
                    samples.append(((m.name, "Model", self.hostname), ns / 1e6))
                out.append((SPECS[name], samples))
        return out

    def log_host(self) -> None:
        """Log mode: the host metrics, as TorchServe's metric collector logs them each interval."""
        stamp = int(time.time())
        for name, value in self.host().items():
            ts_metrics_log.info("%s", log_line(SPECS[name], ("Host", self.hostname), value, stamp))


_BY_SERVER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def metrics_for(dataplane: DataPlane, mode: str = "prometheus") -> TorchServeMetrics:
    """The server's TorchServe metrics, shared by its TorchServe front ends."""
    if dataplane not in _BY_SERVER:
        _BY_SERVER[dataplane] = TorchServeMetrics(dataplane, mode)
    return _BY_SERVER[dataplane]


class CountResponses:
    """ASGI wrapper: counts each HTTP answer's status class (TorchServe's Requests2XX/4XX/5XX)."""

    def __init__(self, app: Any, metrics: TorchServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.count_response(int(message["status"]))
            await send(message)

        await self.app(scope, receive, counting)


def metrics_app(dataplane: DataPlane, metrics: TorchServeMetrics | None = None) -> Starlette:
    metrics = metrics or metrics_for(dataplane)

    async def page(request: Request) -> Response:
        if metrics.mode == "log":
            return Response(b"", media_type=CONTENT_TYPE)  # log mode: nothing is kept for the API
        names = set(request.query_params.getlist("name[]")) or None
        return Response(prometheus_text(metrics.families(names)), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", page)], exception_handlers=EXCEPTION_HANDLERS)


@dataclass
class MetricsFrontEnd:
    """The metrics port, and in log mode the host metrics logged every metric_time_interval."""

    http: HTTPFrontEnd
    metrics: TorchServeMetrics
    interval: float
    _task: asyncio.Task | None = field(default=None, init=False)

    @property
    def server(self) -> Any:
        return self.http.server

    async def start(self) -> None:
        await self.http.start()
        if self.metrics.mode == "log":
            self._task = asyncio.create_task(self._log_host())

    async def _log_host(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.metrics.log_host()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.http.stop()


def frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> MetricsFrontEnd:
    metrics = metrics_for(dataplane, options.torchserve.metrics_mode)
    app = CountResponses(metrics_app(dataplane, metrics), metrics)
    http = HTTPFrontEnd(app, options.host_of("torchserve_metrics"), port, options.http)
    return MetricsFrontEnd(http, metrics, max(options.torchserve.metric_time_interval, 1))
