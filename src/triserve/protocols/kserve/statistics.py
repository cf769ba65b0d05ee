"""Triton's statistics extension: a model version's numbers in Triton's JSON schema (the gRPC
answer is the same schema as a proto)."""

from __future__ import annotations

from typing import Any

from triserve.core.stats import Duration, ModelStats


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def statistics_json(stats: ModelStats) -> dict[str, Any]:
    return {
        "name": stats.name,
        "version": str(stats.version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            "compute_input": _duration(stats.compute_input),
            "compute_infer": _duration(stats.compute_infer),
            "compute_output": _duration(stats.compute_output),
            "cache_hit": {"count": 0, "ns": 0},
            "cache_miss": {"count": 0, "ns": 0},
        },
        "response_stats": {},
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(d[0]),
                "compute_infer": _duration(d[1]),
                "compute_output": _duration(d[2]),
            }
            for size, d in sorted(stats.batches.items())
        ],
        "memory_usage": [],
    }
