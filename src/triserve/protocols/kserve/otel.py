"""Triton's OpenTelemetry trace mode (`--trace-config mode=opentelemetry`): each traced request
becomes spans, built from its timestamps once it is answered, as tritonserver makes them:

    InferRequest               (the front end: HTTP_* / GRPC_* events)
      <model name>             (REQUEST_START .. REQUEST_END; triton.model_name, triton.model_version,
                                triton.trace_id, triton.trace_parent_id, triton.request_id)
        compute                (COMPUTE_START .. COMPUTE_END, with COMPUTE_INPUT_END, COMPUTE_OUTPUT_START)

exported over OTLP/HTTP (`opentelemetry,url=...`, default http://localhost:4318/v1/traces) by a
batch span processor (`opentelemetry,bsp_max_queue_size=`, `bsp_schedule_delay=` milliseconds,
`bsp_max_export_batch_size=`), with resource attributes (`opentelemetry,resource=KEY=VALUE`,
repeatable; service.name defaults to triserve). A W3C `traceparent` header (HTTP) or metadata
entry (gRPC) makes the request's spans children of the caller's and traces it whatever the rate.

Needs the opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http packages (the `otel`
extra); they are imported only when this mode is asked for.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

SETTINGS = ("url", "resource", "bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size")
DEFAULT_URL = "http://localhost:4318/v1/traces"
MISSING = ("trace mode 'opentelemetry' needs the opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http"
           " packages (pip install 'triserve[otel]')")
MODEL_EVENTS = {"REQUEST_START", "QUEUE_START", "INFER_RESPONSE_COMPLETE", "REQUEST_END"}
COMPUTE_EVENTS = {"COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"}


def check_available() -> None:
    """Raise ValueError (the reason) when the packages are not installed."""
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise ValueError(MISSING) from None


def check_setting(key: str, value: str) -> None:
    if key not in SETTINGS:
        raise ValueError(f"unknown opentelemetry trace setting {key!r}: expected one of {', '.join(SETTINGS)}")
    if key == "resource" and "=" not in value:
        raise ValueError(f"opentelemetry,resource expects KEY=VALUE, got {value!r}")
    if key.startswith("bsp_"):
        if not value.isdigit() or int(value) == 0 and key != "bsp_schedule_delay":
            raise ValueError(f"opentelemetry,{key} must be a positive integer, got {value!r}")


class Exporter:
    """Spans for finished traces, through one tracer provider of its own (no global state)."""

    def __init__(self, settings: Iterable[tuple[str, str]], exporter: Any = None) -> None:
        check_available()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        url = DEFAULT_URL
        attributes = {"service.name": "triserve"}
        batch: dict[str, int] = {}
        for key, value in settings:
            if key == "url":
                url = value
            elif key == "resource":
                name, _, attribute = value.partition("=")
                attributes[name] = attribute
            elif key == "bsp_max_queue_size":
                batch["max_queue_size"] = int(value)
            elif key == "bsp_schedule_delay":
                batch["schedule_delay_millis"] = int(value)
            elif key == "bsp_max_export_batch_size":
                batch["max_export_batch_size"] = int(value)
        self.provider = TracerProvider(resource=Resource.create(attributes))
        if exporter is None:  # a given exporter (tests) gets every span as it ends
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url), **batch))
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("triserve")
        self.propagator = TraceContextTextMapPropagator()
        # Timestamps are steady-clock (monotonic) nanoseconds; spans take wall-clock ones.
        self.offset_ns = time.time_ns() - time.monotonic_ns()

    def parent(self, carrier: Mapping[str, str] | None) -> Any:
        """The caller's span context from a `traceparent` entry, or None when there is none valid."""
        if not carrier or "traceparent" not in carrier:
            return None
        from opentelemetry import trace as otel_trace

        context = self.propagator.extract(carrier=dict(carrier))
        span_context = otel_trace.get_current_span(context).get_span_context()
        return context if span_context.is_valid else None

    def export(self, trace: Any, parent: Any = None) -> None:
        from opentelemetry import trace as otel_trace

        stamps = sorted(trace.timestamps, key=lambda s: s[1])
        if not stamps:
            return
        wall = lambda ns: ns + self.offset_ns  # noqa: E731
        kind = otel_trace.SpanKind.SERVER
        root = self.tracer.start_span("InferRequest", context=parent, kind=kind, start_time=wall(stamps[0][1]))
        model_span = compute_span = None
        for name, ns in stamps:
            if name == "REQUEST_START":
                model_span = self.tracer.start_span(
                    trace.model_name, context=otel_trace.set_span_in_context(root), kind=kind, start_time=wall(ns)
                )
                try:
                    version = int(trace.model_version)
                except ValueError:
                    version = -1
                model_span.set_attributes({
                    "triton.model_name": trace.model_name,
                    "triton.model_version": version,
                    "triton.trace_id": trace.id,
                    "triton.trace_parent_id": 0,
                })
                if trace.request_id:
                    model_span.set_attribute("triton.request_id", trace.request_id)
            elif name == "COMPUTE_START" and model_span is not None:
                compute_span = self.tracer.start_span(
                    "compute", context=otel_trace.set_span_in_context(model_span), kind=kind, start_time=wall(ns)
                )
            if name in COMPUTE_EVENTS and compute_span is not None:
                compute_span.add_event(name, timestamp=wall(ns))
                if name == "COMPUTE_END":
                    compute_span.end(end_time=wall(ns))
                    compute_span = None
            elif name in MODEL_EVENTS and model_span is not None:
                model_span.add_event(name, timestamp=wall(ns))
                if name == "REQUEST_END":
                    model_span.end(end_time=wall(ns))
                    model_span = None
            else:
                root.add_event(name, timestamp=wall(ns))
        end = wall(stamps[-1][1])
        for span in (compute_span, model_span):  # a request that failed midway
            if span is not None:
                span.end(end_time=end)
        root.end(end_time=end)

    def close(self) -> None:
        self.provider.shutdown()
