"""Triton's statistics extension: a model version's numbers in Triton's JSON schema, which is
also the schema of the gRPC `ModelStatistics` message."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb

from triserve.core.stats import ModelStats
from triserve.core.types import InferRequest
from triserve.protocols.kserve.statistics import statistics_json

ZERO = {"count": 0, "ns": 0}


def test_a_model_that_never_ran_reports_zeros():
    assert statistics_json(ModelStats("m", 3)) == {
        "name": "m",
        "version": "3",
        "last_inference": 0,
        "inference_count": 0,
        "execution_count": 0,
        "inference_stats": {
            key: ZERO
            for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
        },
        "response_stats": {},
        "batch_stats": [],
        "memory_usage": [],
    }


def test_recorded_requests_and_executions():
    stats = ModelStats("m", 1)
    stats.record_execution(4, input_ns=10, infer_ns=200, output_ns=30)
    stats.record_execution(1, input_ns=1, infer_ns=20, output_ns=3)
    stats.record_execution(4, input_ns=10, infer_ns=200, output_ns=30)
    stats.record_success(1000, queue_ns=100, input_ns=10, infer_ns=200, output_ns=30)
    stats.record_failure(50)
    data = statistics_json(stats)
    assert (data["inference_count"], data["execution_count"]) == (9, 3)
    assert data["last_inference"] > 0
    inference = data["inference_stats"]
    assert inference["success"] == {"count": 1, "ns": 1000}
    assert inference["fail"] == {"count": 1, "ns": 50}
    assert inference["queue"] == {"count": 1, "ns": 100}
    assert inference["compute_infer"] == {"count": 1, "ns": 200}
    # one entry per batch size, smallest first
    assert data["batch_stats"] == [
        {"batch_size": 1, "compute_input": {"count": 1, "ns": 1}, "compute_infer": {"count": 1, "ns": 20}, "compute_output": {"count": 1, "ns": 3}},
        {"batch_size": 4, "compute_input": {"count": 2, "ns": 20}, "compute_infer": {"count": 2, "ns": 400}, "compute_output": {"count": 2, "ns": 60}},
    ]


def test_the_json_is_the_schema_of_the_grpc_message():
    stats = ModelStats("m", 2)
    stats.record_execution(2, 1, 2, 3)
    stats.record_success(10, 1, 2, 3, 4)
    message = json_format.ParseDict(statistics_json(stats), pb.ModelStatistics())  # unknown keys would raise
    assert (message.name, message.version, message.inference_count) == ("m", "2", 2)
    assert message.batch_stats[0].compute_infer.ns == 2
    assert message.inference_stats.success.count == 1


@pytest.mark.anyio
async def test_a_served_model_reports_what_it_ran(dataplane):
    model = dataplane.resolve("simple")
    before = statistics_json(model.stats)
    a = np.ones((2, 16), np.int32)
    await dataplane.infer(model, InferRequest({"INPUT0": a, "INPUT1": a}))
    after = statistics_json(model.stats)
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["execution_count"] == before["execution_count"] + 1
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert 2 in [b["batch_size"] for b in after["batch_stats"]]
