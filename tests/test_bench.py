"""`triserve bench` end to end on the example repository, with tiny measurements: the command's
tables have the expected rows with positive numbers (correctness, not speed)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from triserve.backends import cpu_count
from triserve.bench.sections import SECTIONS

# Slow tier: the benchmark: servers, load generators and real models.
pytestmark = pytest.mark.slow

ROW = re.compile(r"^\| (.+?) \| (\S+) \| (\S+) \| (\S+) \| (\S+) \|$", re.M)
CPU_SHARES = (r": server event loop [\d.]+ ms, its other threads [\d.]+ ms, load generator [\d.]+ ms;"
              r" the ceiling takes [\d.]+ ms of core time per image")


def bench(example_repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "triserve", "bench", "--model-repository", str(example_repo), "--seconds", "0.5", *args],
        capture_output=True, text=True, timeout=600,
    )


def table_rows(output: str) -> dict[str, list[float]]:
    """label -> [images/s, p50 ms, p99 ms, ratio to raw] of every table row (header rows skipped)."""
    rows = {}
    for match in ROW.finditer(output):
        if match[1] in ("measurement", "---"):
            continue
        rows[match[1]] = [float(v) for v in match.groups()[1:]]
    return rows


def test_grpc_and_torchserve_sections(example_repo):
    done = bench(example_repo, "--sections", "grpc,torchserve")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    served = [
        "served gRPC, concurrency 1",
        "served binary HTTP, concurrency 1",
        "served gRPC, concurrency 16",
        "served binary HTTP, concurrency 16",
        "served PUT /predictions/efficientnet_lite0, concurrency 1",
        "served PUT /predictions/efficientnet_lite0, concurrency 8",
    ]
    # the best raw single call: one session with one thread or with every core, whichever was faster
    single = [label for label in rows if re.fullmatch(
        r"raw onnxruntime efficientnet_lite0_onnx, 1 instance\(s\) x \d+ thread\(s\), batch 1", label)]
    assert single, f"no raw single-call row in:\n{done.stdout}"
    raw = [
        single[0],
        "in-process: JPEG decode + image_classifier + torch.jit efficientnet_lite0, 2 thread(s) x 1",
    ]
    for label in served + raw:
        assert label in rows, f"no row {label!r} in:\n{done.stdout}"
        assert all(v > 0 for v in rows[label]), (label, rows[label])
    assert rows[raw[1]][3] == 1.0  # the ceiling is its own baseline
    assert "failed requests" not in done.stderr, done.stderr
    summary = done.stdout.split("## summary", 1)[1]
    assert re.search(r"aim: gRPC p50 at concurrency 1 within 1 ms of raw: .*: (met|NOT met)", summary)
    assert re.search(r"aim: TorchServe .* concurrency 1 [\d.]+, concurrency 8 [\d.]+: (met|NOT met)", summary)
    for row in ("grpc: CPU per call of served gRPC, concurrency 16",
                "torchserve: CPU per call of served PUT /predictions/efficientnet_lite0, concurrency 8"):
        assert re.search(re.escape(row) + CPU_SHARES, summary), summary


def test_sweep_and_openvino_sections(example_repo):
    done = bench(example_repo, "--sections", "sweep,openvino", "--seconds", "0.3")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    wide = f"1 instance x {cpu_count()} threads"
    labels = [f"served {layout}, concurrency {c}" for layout in ("default layout", wide)
              for c in (1, 2, 4, 8, 16, 32)]
    labels += ["served OpenVINO, binary HTTP, concurrency 1", "served OpenVINO, binary HTTP, concurrency 8"]
    labels += [label for label in rows if label.startswith("raw OpenVINO efficientnet_lite0_onnx_openvino")]
    assert any(label.startswith("raw OpenVINO") for label in labels), done.stdout
    for label in labels:
        assert label in rows, f"no row {label!r} in:\n{done.stdout}"
        assert all(v > 0 for v in rows[label]), (label, rows[label])
    summary = done.stdout.split("## summary", 1)[1]
    assert re.search(r"aim: default layout loses at most 10% from its best point .*: (met|NOT met)", summary)
    assert re.search(rf"aim: {wide} loses at most 10% .*: (met|NOT met)", summary)
    assert re.search(r"openvino: raw OpenVINO / raw onnxruntime: [\d.]+", summary)
    assert re.search(r"aim: served OpenVINO at least 0.9 of raw OpenVINO: concurrency 1 [\d.]+, concurrency 8 [\d.]+", summary)
    assert re.search(r"openvino: CPU per call of served OpenVINO, binary HTTP, concurrency 8" + CPU_SHARES, summary)


def test_shm_and_ensemble_sections(example_repo):
    # perf_analyzer from .perf-venv (scripts/setup-perf-analyzer, which scripts/test runs)
    done = bench(example_repo, "--sections", "shm,ensemble", "--seconds", "0.3")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    labels = ["served binary HTTP (bench client), concurrency 8"]
    labels += [f"perf_analyzer {protocol}, {how}, concurrency 8" for protocol, body in (("HTTP", "body (binary)"),
                                                                                        ("gRPC", "message"))
               for how in (f"tensors in the {body}", "system shared memory")]
    labels += ["in-process: JPEG decode + preprocess + onnxruntime efficientnet_lite0_onnx, 2 thread(s) x 1",
               "served v2 HTTP BYTES, concurrency 8", "served PUT /predictions/efficientnet_lite0_jpeg, concurrency 8",
               "served PUT /predictions/efficientnet_lite0 (archive), concurrency 8"]
    for label in labels:
        assert label in rows, f"no row {label!r} in:\n{done.stdout}"
        assert all(v > 0 for v in rows[label]), (label, rows[label])
    assert "failed requests" not in done.stderr, done.stderr
    summary = done.stdout.split("## summary", 1)[1]
    assert re.search(r"shm: perf_analyzer at concurrency 8, system shared memory / tensors in the body:"
                     r" HTTP [\d.]+, gRPC [\d.]+; / raw onnxruntime \([\d.]+ images/s\)", summary)
    assert re.search(r"ensemble at concurrency 8 / in-process decode \+ ONNX \([\d.]+ images/s\): v2 HTTP BYTES [\d.]+,"
                     r" PUT /predictions/efficientnet_lite0_jpeg [\d.]+, PUT /predictions/efficientnet_lite0"
                     r" \(archive\) [\d.]+", summary)


def test_unknown_section_is_refused(example_repo):
    done = bench(example_repo, "--sections", "onnx,bogus")
    assert done.returncode == 2
    assert f"unknown section(s) bogus; choose from {','.join(SECTIONS)}" in done.stderr
    assert {"onnx", "grpc", "torchserve", "backends", "sweep", "openvino", "shm", "ensemble"} <= set(SECTIONS)


def test_missing_archive_fails_its_section_only(example_repo):
    done = bench(example_repo, "--sections", "torchserve", "--archive", "missing.mar")
    assert done.returncode == 1
    assert "## torchserve: failed:" in done.stdout and "missing.mar" in done.stdout
    assert "- torchserve: failed" in done.stdout
