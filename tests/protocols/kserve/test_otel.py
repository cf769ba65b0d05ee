"""Triton's OpenTelemetry trace mode: a traced request's timestamps become the spans tritonserver
makes (InferRequest > model > compute, with their events), children of the caller's span when it
sends a W3C traceparent; spans go to the SDK's in-memory exporter here (OTLP/HTTP when serving)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from triserve.protocols.kserve import trace
from triserve.protocols.kserve.rest import V2HTTP

A = np.arange(16, dtype=np.int32).reshape(1, 16)
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def otel_tracer(exporter: InMemorySpanExporter, rate: int) -> trace.Tracer:
    values = trace.parse_config(["mode=opentelemetry", "level=TIMESTAMPS", f"rate={rate}",
                                 "opentelemetry,resource=deployment=test"])
    return trace.Tracer(values, otel_exporter=exporter)


def body() -> dict:
    return {"id": "req-1", "inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": A.ravel().tolist()}
                                      for n in ("INPUT0", "INPUT1")]}


@pytest.mark.anyio
async def test_a_traced_request_becomes_tritons_spans_under_the_callers_span(dataplane):
    exporter = InMemorySpanExporter()
    tracer = otel_tracer(exporter, rate=1000)  # only the request that carries a traceparent is traced
    transport = httpx.ASGITransport(app=V2HTTP(dataplane, tracer=tracer).app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/v2/models/simple/infer", json=body())).status_code == 200
        assert exporter.get_finished_spans() == ()
        headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        assert (await client.post("/v2/models/simple/infer", json=body(), headers=headers)).status_code == 200
        settings = (await client.get("/v2/trace/setting")).json()
    assert settings["trace_mode"] == "opentelemetry" and "trace_file" not in settings
    tracer.close()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"InferRequest", "simple", "compute"}
    root, model, compute = spans["InferRequest"], spans["simple"], spans["compute"]
    assert format(root.context.trace_id, "032x") == CALLER_TRACE and format(root.parent.span_id, "016x") == CALLER_SPAN
    assert model.parent.span_id == root.context.span_id and compute.parent.span_id == model.context.span_id
    assert {s.kind for s in spans.values()} == {SpanKind.SERVER}
    assert [e.name for e in root.events] == ["HTTP_RECV_START", "HTTP_RECV_END", "HTTP_SEND_START", "HTTP_SEND_END"]
    assert [e.name for e in model.events] == ["REQUEST_START", "QUEUE_START", "INFER_RESPONSE_COMPLETE", "REQUEST_END"]
    assert [e.name for e in compute.events] == ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]
    assert dict(model.attributes) == {"triton.model_name": "simple", "triton.model_version": 1, "triton.trace_id": 1,
                                      "triton.trace_parent_id": 0, "triton.request_id": "req-1"}
    assert root.start_time <= model.start_time <= compute.start_time <= compute.end_time <= model.end_time <= root.end_time
    assert root.resource.attributes["service.name"] == "triserve"
    assert root.resource.attributes["deployment"] == "test"


@pytest.mark.anyio
async def test_without_a_traceparent_the_rate_decides(dataplane):
    exporter = InMemorySpanExporter()
    tracer = otel_tracer(exporter, rate=2)
    transport = httpx.ASGITransport(app=V2HTTP(dataplane, tracer=tracer).app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(4):
            assert (await client.post("/v2/models/simple/infer", json=body())).status_code == 200
    tracer.close()
    roots = [s for s in exporter.get_finished_spans() if s.name == "InferRequest"]
    assert len(roots) == 2 and all(s.parent is None for s in roots)
