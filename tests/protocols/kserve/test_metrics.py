"""Triton's Prometheus metrics in-process: the metrics app over httpx's ASGI transport, scraped
after a known set of inferences through the v2 HTTP app, on this module's own data plane."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from triserve.protocols.kserve.metrics import metrics_app
from triserve.protocols.kserve.rest import V2HTTP
from triserve.protocols.kserve.statistics import statistics_json

pytestmark = pytest.mark.anyio

SIMPLE_BATCHES = (1, 2, 3)  # three requests, six inferences
SCORES_REQUESTS = 2  # batch 1 each
COUNTERS = [
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
]
SAMPLE = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')


@dataclass
class Scrape:
    text: str
    content_type: str
    stats: dict[str, dict]  # statistics_json per model, read right after the scrape

    def value(self, name: str, model: str | None = None, **labels: str) -> float:
        if model is not None:
            labels = {"model": model, "version": "1", **labels}
        return samples(self.text)[name, tuple(sorted(labels.items()))]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, labels, value = SAMPLE.match(line).groups()
            pairs = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels or "")))
            found[name, pairs] = float(value)
    return found


async def simple_infer(client: httpx.AsyncClient, batch: int) -> None:
    a = np.ones((batch, 16), np.int32)
    inputs = [{"name": n, "datatype": "INT32", "shape": [batch, 16], "data": a.ravel().tolist()} for n in ("INPUT0", "INPUT1")]
    assert (await client.post("/v2/models/simple/infer", json={"inputs": inputs})).status_code == 200


async def scrape(client: httpx.AsyncClient) -> httpx.Response:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response


@pytest.fixture(scope="module")
async def clients(dataplane):
    v2 = httpx.AsyncClient(transport=httpx.ASGITransport(app=V2HTTP(dataplane).app()), base_url="http://v2")
    metrics = httpx.AsyncClient(transport=httpx.ASGITransport(app=metrics_app(dataplane)), base_url="http://metrics")
    async with v2, metrics:
        yield v2, metrics


@pytest.fixture(scope="module")
async def scraped(clients, dataplane) -> Scrape:
    v2, metrics = clients
    for batch in SIMPLE_BATCHES:
        await simple_infer(v2, batch)
    scores = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 5], "data": [0.0] * 5}]}
    for _ in range(SCORES_REQUESTS):
        assert (await v2.post("/v2/models/scores/infer", json=scores)).status_code == 200
    response = await scrape(metrics)
    stats = {m.name: statistics_json(m.stats) for m in dataplane.models()}
    return Scrape(response.text, response.headers["content-type"], stats)


async def test_served_as_prometheus_text(scraped):
    assert scraped.content_type == "text/plain; version=0.0.4; charset=utf-8"


async def test_counters_keep_tritons_names_without_a_total_suffix(scraped):
    for name in COUNTERS:
        assert f"{name}_total" not in scraped.text
        assert f"# TYPE {name} counter\n" in scraped.text
        assert re.search(rf"^# HELP {name} \S", scraped.text, re.M)
    assert "# TYPE nv_inference_pending_request_count gauge\n" in scraped.text


async def test_every_sample_follows_the_type_line_of_its_family(scraped):
    family = None
    for line in scraped.text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
        elif not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert name == family or name in (f"{family}_bucket", f"{family}_count", f"{family}_sum"), line


async def test_counts_match_the_requests_made(scraped):
    assert scraped.value("nv_inference_request_success", "simple") == len(SIMPLE_BATCHES)
    assert scraped.value("nv_inference_count", "simple") == sum(SIMPLE_BATCHES)
    assert scraped.value("nv_inference_exec_count", "simple") == len(SIMPLE_BATCHES)  # no dynamic batching
    assert scraped.value("nv_inference_request_success", "scores") == SCORES_REQUESTS
    assert scraped.value("nv_inference_count", "scores") == SCORES_REQUESTS
    for model in ("simple", "scores", "doubler"):
        assert scraped.value("nv_inference_request_failure", model) == 0
        assert scraped.value("nv_inference_pending_request_count", model) == 0
    assert scraped.value("nv_inference_request_success", "doubler") == 0


async def test_durations_are_the_statistics_numbers(scraped):
    for model, stats in scraped.stats.items():
        inference = stats["inference_stats"]
        assert scraped.value("nv_inference_request_duration_us", model) == (inference["success"]["ns"] + inference["fail"]["ns"]) // 1000
        assert scraped.value("nv_inference_queue_duration_us", model) == inference["queue"]["ns"] // 1000
        assert scraped.value("nv_inference_compute_infer_duration_us", model) == inference["compute_infer"]["ns"] // 1000
        assert scraped.value("nv_inference_count", model) == stats["inference_count"]
    assert scraped.value("nv_inference_compute_infer_duration_us", "simple") > 0


async def test_latency_histograms_count_every_request_in_cumulative_buckets(scraped):
    for name in ("nv_inference_request_duration_histogram_us", "nv_inference_queue_duration_histogram_us"):
        assert f"# TYPE {name} histogram\n" in scraped.text
        assert scraped.value(f"{name}_count", "simple") == len(SIMPLE_BATCHES)
        buckets = [
            (dict(labels)["le"], value)
            for (sample, labels), value in samples(scraped.text).items()
            if sample == f"{name}_bucket" and dict(labels)["model"] == "simple"
        ]
        counts = [value for _, value in buckets]
        assert counts == sorted(counts)
        assert buckets[-1] == ("+Inf", len(SIMPLE_BATCHES))


async def test_cpu_and_memory_gauges(scraped):
    assert 0 <= scraped.value("nv_cpu_utilization") <= 1
    assert 0 < scraped.value("nv_cpu_memory_used_bytes") <= scraped.value("nv_cpu_memory_total_bytes")


async def test_each_scrape_reads_the_numbers_of_the_moment(clients):
    v2, metrics = clients
    before = samples((await scrape(metrics)).text)
    await simple_infer(v2, 4)
    after = samples((await scrape(metrics)).text)
    key = (("model", "simple"), ("version", "1"))
    assert after["nv_inference_request_success", key] == before["nv_inference_request_success", key] + 1
    assert after["nv_inference_count", key] == before["nv_inference_count", key] + 4
