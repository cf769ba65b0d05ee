"""TorchServe's metrics in-process: ts_metrics.yaml's default frontend, host and model metrics, in
TorchServe's Prometheus text, and metrics_mode=log."""

from __future__ import annotations

import logging
import re

import pytest

from tests.inprocess import tiny_repository
from tests.protocols.torchserve.support import ROW, archive_dataplane, client
from triserve.protocols.torchserve.inference import TorchServeInference
from triserve.protocols.torchserve.management import TorchServeManagement
from triserve.protocols.torchserve.metrics import (
    CountResponses, TorchServeMetrics, java_double, log_line, metrics_app, SPECS,
)
from triserve.ts_config import apply

pytestmark = pytest.mark.anyio

# TorchServe's Java client writes a comma after every label: name{a="x",b="y",} 1.0
SAMPLE = re.compile(r'^(?P<name>\w+)\{(?P<labels>(?:\w+="[^"]*",)*)\} (?P<value>-?[0-9.]+(?:E-?[0-9]+)?)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')
COUNTERS = ["ts_inference_requests_total", "ts_inference_latency_microseconds", "ts_queue_latency_microseconds"]


def families(text: str) -> dict[str, dict]:
    """name -> {"type", "help", "samples": [(labels, value)]}, every line checked."""
    found: dict[str, dict] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            found.setdefault(name, {"samples": []})["help"] = help_text
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            found[name]["type"] = kind
        else:
            match = SAMPLE.match(line)
            assert match, line
            found[match["name"]]["samples"].append((dict(LABEL.findall(match["labels"])), float(match["value"])))
    return found


def per_model(found: dict[str, dict]) -> dict[tuple[str, str, str], float]:
    return {(name, labels["model_name"], labels["model_version"]): value
            for name in COUNTERS if name in found for labels, value in found[name]["samples"]}


async def test_counters_count_the_requests_each_model_served(store, tmp_path):
    async with archive_dataplane(store, "adder.mar", repository=tiny_repository(tmp_path)) as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference, client(metrics_app(dataplane)) as metrics:
            before = per_model(families((await metrics.get("/metrics")).text))
            for _ in range(3):
                assert (await inference.post("/predictions/adder", json=ROW)).status_code == 200
            assert (await inference.post("/predictions/simple", json=ROW)).status_code == 200
            response = await metrics.get("/metrics")
    found = families(response.text)
    after = per_model(found)
    assert response.headers["content-type"].startswith("text/plain")
    assert before[("ts_inference_requests_total", "adder", "1.0")] == 0
    assert after[("ts_inference_requests_total", "adder", "1.0")] == 3  # an archive's version string
    assert after[("ts_inference_requests_total", "simple", "1")] == 1  # a repository model's version number
    assert after[("ts_inference_requests_total", "scores", "1")] == 0
    assert after[("ts_inference_latency_microseconds", "adder", "1.0")] > 0
    assert ("ts_queue_latency_microseconds", "adder", "1.0") in after
    for name in COUNTERS:
        assert found[name]["type"] == "counter"
        assert all(labels["hostname"] for labels, _ in found[name]["samples"])
    assert found["ts_inference_latency_microseconds"]["help"] == "Torchserve prometheus counter metric with unit: Microseconds"


async def test_the_default_gauges_after_a_request(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference, client(metrics_app(dataplane)) as metrics:
            quiet = families((await metrics.get("/metrics")).text)
            assert (await inference.post("/predictions/adder", json=ROW)).status_code == 200
            found = families((await metrics.get("/metrics")).text)
    assert "QueueTime" not in quiet and "HandlerTime" not in quiet  # no request yet: nothing to report
    for name in ("QueueTime", "WorkerThreadTime"):
        ((labels, value),) = found[name]["samples"]
        assert list(labels) == ["Level", "Hostname"] and labels["Level"] == "Host" and value >= 0
        assert found[name]["type"] == "gauge" and found[name]["help"].endswith("unit: Milliseconds")
    workers = found["WorkerLoadTime"]["samples"]  # one per worker (model instance)
    assert [labels["WorkerName"] for labels, _ in workers] == [f"W-{9000 + i}-adder_1.0" for i in range(len(workers))]
    assert workers and all(labels["Level"] == "Host" and value > 0 for labels, value in workers)
    for name in ("HandlerTime", "PredictionTime"):
        ((labels, value),) = found[name]["samples"]
        assert labels == {"ModelName": "adder", "Level": "Model", "Hostname": labels["Hostname"]} and value > 0
        assert found[name]["help"].endswith("unit: ms")
    host = {name: found[name]["samples"][0][1] for name in
            ("CPUUtilization", "MemoryUsed", "MemoryAvailable", "MemoryUtilization", "DiskUsage", "DiskUtilization",
             "DiskAvailable")}
    assert 0 <= host["CPUUtilization"] <= 100 and 0 < host["MemoryUtilization"] < 100
    assert host["MemoryUsed"] > 0 and host["MemoryAvailable"] > 0 and host["DiskAvailable"] > 0
    assert found["MemoryUsed"]["help"].endswith("unit: Megabytes") and found["DiskUsage"]["help"].endswith("unit: Gigabytes")


async def test_requests_are_counted_by_status_class_on_every_torchserve_port(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        counted = TorchServeMetrics(dataplane)
        inference_app = CountResponses(TorchServeInference(dataplane).app(), counted)
        management_app = CountResponses(TorchServeManagement(dataplane).app(), counted)
        async with client(inference_app) as inference, client(management_app) as management, \
                client(CountResponses(metrics_app(dataplane, counted), counted)) as metrics:
            assert (await inference.post("/predictions/adder", json=ROW)).status_code == 200
            assert (await management.get("/models")).status_code == 200
            assert (await inference.post("/predictions/nope", json=ROW)).status_code == 404
            assert (await inference.post("/predictions/adder", content=b"[1,")).status_code == 400
            page = await metrics.get("/metrics", params={"name[]": ["Requests2XX", "Requests4XX", "Requests5XX"]})
    # the newman collection's own check of the metrics page
    assert re.search(r'Requests2XX\{Level="Host",Hostname=".*",\} \d+\.\d+', page.text)
    found = families(page.text)
    assert set(found) == {"Requests2XX", "Requests4XX"}  # no 5XX answered yet: not written, as TorchServe
    assert found["Requests2XX"]["samples"][0][1] == 2 and found["Requests4XX"]["samples"][0][1] == 2
    assert found["Requests2XX"]["type"] == "counter"


async def test_name_filter_answers_only_the_metrics_asked_for(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(metrics_app(dataplane)) as metrics:
            one = await metrics.get("/metrics", params={"name[]": "ts_queue_latency_microseconds"})
            two = await metrics.get("/metrics", params=[("name[]", "ts_inference_requests_total"),
                                                        ("name[]", "MemoryUsed")])
    assert set(families(one.text)) == {"ts_queue_latency_microseconds"}
    assert set(families(two.text)) == {"ts_inference_requests_total", "MemoryUsed"}


async def test_models_scaled_to_zero_leave_the_metrics(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(metrics_app(dataplane)) as metrics:
            running = families((await metrics.get("/metrics")).text)
            await dataplane.scale("adder", 0)
            stopped = families((await metrics.get("/metrics")).text)
    assert ("ts_inference_requests_total", "adder", "1.0") in per_model(running) and "WorkerLoadTime" in running
    assert per_model(stopped) == {} and "WorkerLoadTime" not in stopped and "MemoryUsed" in stopped


async def test_log_mode_logs_the_metrics_and_the_api_answers_nothing(store, caplog):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        logged = TorchServeMetrics(dataplane, mode="log", hostname="box")
        inference_app = CountResponses(TorchServeInference(dataplane, metrics=logged).app(), logged)
        async with client(inference_app) as inference, client(metrics_app(dataplane, logged)) as metrics:
            with caplog.at_level(logging.INFO, logger="triserve"):
                assert (await inference.post("/predictions/adder", json=ROW)).status_code == 200
                logged.log_host()
                page = await metrics.get("/metrics")
    assert page.status_code == 200 and page.text == ""
    ts = [r.getMessage() for r in caplog.records if r.name == "triserve.ts_metrics"]
    model = [r.getMessage() for r in caplog.records if r.name == "triserve.model_metrics"]
    assert any(re.fullmatch(r"Requests2XX\.Count:1\.0\|#Level:Host\|#hostname:box,timestamp:\d+", m) for m in ts)
    assert any(re.fullmatch(r"ts_inference_requests_total\.Count:1\.0\|#model_name:adder,model_version:default"
                            r"\|#hostname:box,timestamp:\d+", m) for m in ts)
    assert any(m.startswith("QueueTime.Milliseconds:") for m in ts)
    assert any(m.startswith("MemoryUsed.Megabytes:") and "|#Level:Host|#hostname:box," in m for m in ts)
    assert any(re.match(r"HandlerTime\.ms:[0-9.E-]+\|#ModelName:adder,Level:Model\|#hostname:box,", m) for m in model)


def test_values_are_written_as_java_writes_doubles():
    assert [java_double(v) for v in (0, 5, 0.25, 1234567.5, 12345678, 1.5e-4, -2)] == [
        "0.0", "5.0", "0.25", "1234567.5", "1.2345678E7", "1.5E-4", "-2.0"]
    assert log_line(SPECS["WorkerLoadTime"], ("W-9000-m_1.0", "Host", "h"), 12, 7) == (
        "WorkerLoadTime.Milliseconds:12.0|#WorkerName:W-9000-m_1.0,Level:Host|#hostname:h,timestamp:7")


def test_metrics_mode_comes_from_config_properties(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text("metrics_mode=log\nmetric_time_interval=5\ngrpc_inference_port=9070\n")
    settings: dict = {}
    ports = {"torchserve_grpc_inference": 7070}
    apply(path, settings, ports, {"torchserve_grpc_inference": 7070}, "127.0.0.1", "127.0.0.1")
    assert settings["metrics_mode"] == "log" and settings["metric_time_interval"] == 5
    assert ports["torchserve_grpc_inference"] == 9070
    path.write_text("metrics_mode=statsd\n")
    with pytest.raises(Exception, match="metrics_mode=statsd"):
        apply(path, {}, {}, {}, "127.0.0.1", "127.0.0.1")
