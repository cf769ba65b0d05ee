"""The benchmark's verdicts: a measurement in which nothing completed fails the run (exit 1),
rounds of a measurement become one row of medians, and the output names its aims and no internal
references."""

from __future__ import annotations

import argparse
import math
import re

import pytest

from triserve.bench import bench_main, sections
from triserve.bench.cpu import CPUPerCall
from triserve.bench.results import Result, Table, median_of, median_ratio, result
from triserve.cli import parser


def test_no_completed_call_is_zero_throughput_and_nan_latency():
    empty = result("served, concurrency 1", [], 1.0)
    assert empty.images_per_s == 0 and math.isnan(empty.p50_ms)


def test_a_table_lists_the_rows_that_measured_nothing():
    raw = Result("raw", 100.0, 1.0, 2.0)
    table = Table("t", [(raw, raw), (Result("served a", 0.0, math.nan, math.nan), raw),
                        (Result("served b", 50.0, math.nan, 3.0), raw), (Result("served c", 50.0, 2.0, 3.0), raw)])
    assert table.without_throughput() == ["served a", "served b"]
    assert Table("ok", [(raw, raw)]).without_throughput() == []


def test_rounds_become_one_row_of_medians_and_ratios_are_taken_round_by_round():
    rounds = [Result("a", 10.0, 5.0, 9.0), Result("a", 30.0, 1.0, 7.0), Result("a", 20.0, 3.0, 8.0)]
    assert median_of(rounds) == Result("a", 20.0, 3.0, 8.0)
    raws = [Result("raw", 20.0, 1.0, 1.0), Result("raw", 30.0, 1.0, 1.0), Result("raw", 10.0, 1.0, 1.0)]
    assert median_ratio(rounds, raws) == 1.0  # the ratios 0.5, 1.0, 2.0; of the medians it would also be 1.0
    assert median_ratio(rounds[:2], raws[:2]) == 0.75
    with pytest.raises(ValueError):
        median_ratio(rounds, raws[:2])


def test_rounds_with_cpu_shares_give_the_row_their_medians():
    shares = [CPUPerCall(1.0, 10.0, 0.5), CPUPerCall(3.0, 9.0, 0.25), CPUPerCall(2.0, 11.0, 1.0)]
    rounds = [Result("a", 10.0, 5.0, 9.0, cpu) for cpu in shares]
    assert median_of(rounds).cpu == CPUPerCall(2.0, 10.0, 0.5)
    rounds[1].cpu = None  # a round that could not read the server's threads: no shares for the row
    assert median_of(rounds).cpu is None


def bench_args(tmp_path, sections_: str) -> argparse.Namespace:
    return parser().parse_args(["bench", "--model-repository", str(tmp_path / "model_repository"),
                                "--sections", sections_, "--seconds", "0.1"])


@pytest.fixture
def fake_sections(monkeypatch):
    """Sections that measure nothing real: what bench_main makes of their tables is the point."""
    raw = Result("raw onnxruntime", 100.0, 1.0, 2.0)
    tables = {
        "onnx": Table("onnx: fine", [(raw, raw), (Result("served, concurrency 1", 90.0, 1.1, 2.0), raw)],
                      summary=["onnx: best served, concurrency 1: 0.90 of the best raw"]),
        "grpc": Table("grpc: nothing completed", [(raw, raw), (Result("served gRPC, concurrency 1", 0.0, math.nan,
                                                                       math.nan), raw)],
                      summary=["aim: gRPC p50 at concurrency 1 within 1 ms of raw: nan ms: NOT met"]),
    }
    monkeypatch.setattr(sections, "SECTIONS", {name: (lambda b, t=t: t) for name, t in tables.items()})


def test_zero_throughput_fails_the_run(fake_sections, tmp_path, capsys):
    assert bench_main(bench_args(tmp_path, "onnx,grpc")) == 1
    out = capsys.readouterr().out
    assert "## grpc: failed: no throughput (0 images/s or nan) in: served gRPC, concurrency 1" in out
    summary = out.split("## summary", 1)[1]
    assert "- grpc: failed: no throughput in 1 measurement(s)" in summary
    assert "- onnx: best served" in summary and "NOT met" not in summary  # a failed section claims no verdict


def test_a_run_that_measured_everything_succeeds_and_names_its_aims(fake_sections, tmp_path, capsys):
    assert bench_main(bench_args(tmp_path, "onnx")) == 0
    assert bench_main(bench_args(tmp_path, "onnx,grpc")) == 1
    out = capsys.readouterr().out
    assert ("Aims: gRPC p50 at concurrency 1 within 1 ms of raw onnxruntime.") in out
    assert not re.search(r"issue \d|\(issue", out, re.I)
