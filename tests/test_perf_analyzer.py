"""Triton's own load generator, perf_analyzer, runs against triserve and fills its server-side block.

scripts/setup-perf-analyzer (run by scripts/test) installs it into .perf-venv.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import ROOT

# Slow tier: perf_analyzer against a server of the example model.
pytestmark = pytest.mark.slow

PERF_ANALYZER = ROOT / ".perf-venv" / "bin" / "perf-analyzer"
MODEL = "efficientnet_lite0_onnx"


@pytest.fixture(scope="module")
def server(start_server, example_repo):
    assert PERF_ANALYZER.exists(), "run scripts/setup-perf-analyzer (scripts/test does)"
    return start_server("--model-repository", example_repo, "--allow-client-shm", "true", frontends=("http", "grpc"))


def run(*args: str) -> str:
    # A fixed request count instead of stability windows: a busy machine never "stabilizes".
    done = subprocess.run(
        [str(PERF_ANALYZER), "-m", MODEL, "--request-count", "64", *args],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def server_blocks(output: str) -> list[dict[str, int]]:
    counts = re.findall(
        r"Server:\s*\n\s*Inference count: (\d+)\s*\n\s*Execution count: (\d+)\s*\n\s*Successful request count: (\d+)",
        output,
    )
    return [{"inferences": int(i), "executions": int(e), "requests": int(r)} for i, e, r in counts]


def test_perf_analyzer_over_http_concurrency_1_to_16(server):
    # perf_analyzer takes a request count for one concurrency at a time.
    output = run("-u", server.url, "--concurrency-range", "1") + run("-u", server.url, "--concurrency-range", "16")
    assert "Request concurrency: 1" in output and "Request concurrency: 16" in output
    blocks = server_blocks(output)
    assert len(blocks) == 2 and all(b["requests"] > 0 and b["inferences"] >= b["requests"] for b in blocks)
    assert re.search(r"Avg request latency: \d+ usec \(overhead \d+ usec \+ queue \d+ usec \+ compute input", output)
    assert re.search(r"Concurrency: 16, throughput: [\d.]+ infer/sec", output)


def test_perf_analyzer_over_grpc(server):
    output = run("-i", "grpc", "-u", f"127.0.0.1:{server.ports['grpc']}", "--concurrency-range", "2")
    (block,) = server_blocks(output)
    assert block["requests"] > 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_sends_and_receives_tensors_through_system_shared_memory(server, protocol):
    url = server.url if protocol == "http" else f"127.0.0.1:{server.ports['grpc']}"
    output = run("-i", protocol, "-u", url, "--shared-memory", "system", "--concurrency-range", "2")
    (block,) = server_blocks(output)
    assert block["requests"] > 0 and block["inferences"] >= block["requests"]
    assert re.search(r"Concurrency: 2, throughput: [\d.]+ infer/sec", output)
