"""TorchServe's metrics API in-process: Prometheus counters of the requests the models served."""

from __future__ import annotations

import re

import pytest

from tests.inprocess import tiny_repository
from tests.protocols.torchserve.support import ROW, archive_dataplane, client
from triserve.protocols.torchserve.inference import TorchServeInference
from triserve.protocols.torchserve.metrics import metrics_app

pytestmark = pytest.mark.anyio

SAMPLE = re.compile(r"^(?P<name>\w+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')
COUNTERS = ["ts_inference_requests_total", "ts_inference_latency_microseconds", "ts_queue_latency_microseconds"]


def samples(text: str) -> dict[tuple[str, str, str], float]:
    """(sample name, model_name, model_version) -> value, as written (TorchServe's names, no added
    suffixes); every sample carries the host's name."""
    found = {}
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            assert line.endswith(" counter")
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            labels = dict(LABEL.findall(match["labels"]))
            assert labels["hostname"]
            found[(match["name"], labels["model_name"], labels["model_version"])] = float(match["value"])
    return found


async def test_counters_count_the_requests_each_model_served(store, tmp_path):
    async with archive_dataplane(store, "adder.mar", repository=tiny_repository(tmp_path)) as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference, client(metrics_app(dataplane)) as metrics:
            before = samples((await metrics.get("/metrics")).text)
            for _ in range(3):
                assert (await inference.post("/predictions/adder", json=ROW)).status_code == 200
            assert (await inference.post("/predictions/simple", json=ROW)).status_code == 200
            response = await metrics.get("/metrics")
    after = samples(response.text)
    assert response.headers["content-type"].startswith("text/plain")
    assert before[("ts_inference_requests_total", "adder", "1.0")] == 0
    assert after[("ts_inference_requests_total", "adder", "1.0")] == 3  # an archive's version string
    assert after[("ts_inference_requests_total", "simple", "1")] == 1  # a repository model's version number
    assert after[("ts_inference_requests_total", "scores", "1")] == 0
    assert after[("ts_inference_latency_microseconds", "adder", "1.0")] > 0
    assert ("ts_queue_latency_microseconds", "adder", "1.0") in after
    assert {name for name, _, _ in after} == set(COUNTERS)


async def test_name_filter_answers_only_the_counters_asked_for(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(metrics_app(dataplane)) as metrics:
            one = await metrics.get("/metrics", params={"name[]": "ts_queue_latency_microseconds"})
            two = await metrics.get("/metrics", params=[("name[]", "ts_inference_requests_total"),
                                                        ("name[]", "ts_inference_latency_microseconds")])
    assert "# TYPE ts_queue_latency_microseconds counter" in one.text
    assert {name for name, _, _ in samples(one.text)} == {"ts_queue_latency_microseconds"}
    assert {name for name, _, _ in samples(two.text)} == {"ts_inference_requests_total", "ts_inference_latency_microseconds"}


async def test_models_scaled_to_zero_leave_the_metrics(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(metrics_app(dataplane)) as metrics:
            running = samples((await metrics.get("/metrics")).text)
            await dataplane.scale("adder", 0)
            stopped = await metrics.get("/metrics")
    assert ("ts_inference_requests_total", "adder", "1.0") in running
    assert stopped.status_code == 200 and samples(stopped.text) == {}
