"""perf_analyzer as the benchmark runs it: found or reported missing, its CSV report read, its
failures reported with its own words (no number stands in for a run that did not happen)."""

from __future__ import annotations

import math
import os
import stat

import pytest

from triserve.bench import perf

# perf_analyzer 2.51's `-f` report of one run (concurrency 8, system shared memory), as written.
REPORT = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "8,31.9553,265,19757,97955,1,33607,3,0,143580,212787,236184,250703\n"
)


def executable(path, text: str):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_report_gives_inferences_per_second_and_latencies_in_milliseconds():
    r = perf.parse_csv("perf_analyzer HTTP, system shared memory, concurrency 8", REPORT)
    assert r.label == "perf_analyzer HTTP, system shared memory, concurrency 8"
    assert (r.images_per_s, r.p50_ms, r.p99_ms) == (31.9553, 143.58, 250.703)


def test_a_report_without_its_columns_or_rows_is_an_error_not_a_number():
    with pytest.raises(RuntimeError, match="lacks 'p99 latency'"):
        perf.parse_csv("x", "Concurrency,Inferences/Second,p50 latency\n8,30,1000\n")
    with pytest.raises(RuntimeError, match="has 0 rows, not one"):
        perf.parse_csv("x", REPORT.splitlines()[0] + "\n")


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No checkout wrapper and an empty PATH: perf_analyzer is nowhere to be found."""
    monkeypatch.setattr(perf, "CHECKOUT_PERF_ANALYZER", tmp_path / "no-perf-venv" / "perf-analyzer")
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    return tmp_path / "empty-bin"


def test_missing_perf_analyzer_says_so_and_how_to_get_it(nowhere, tmp_path):
    with pytest.raises(RuntimeError) as e:
        perf.find_perf_analyzer()
    assert str(e.value).startswith("perf_analyzer not found (neither .perf-venv/bin/perf-analyzer")
    assert "scripts/setup-perf-analyzer" in str(e.value) and "no shared-memory figures were measured" in str(e.value)
    not_executable = tmp_path / "perf_analyzer"
    not_executable.write_text("")
    for given in (str(tmp_path / "missing"), str(not_executable)):
        with pytest.raises(RuntimeError, match=f"perf_analyzer not found: {given} is not an executable file"):
            perf.find_perf_analyzer(given)


def test_the_given_path_then_the_checkout_then_path_is_used(nowhere, tmp_path, monkeypatch):
    on_path = executable(nowhere / "perf_analyzer", "#!/bin/sh\n")
    assert perf.find_perf_analyzer() == on_path
    checkout = executable(tmp_path / "perf-analyzer", "#!/bin/sh\n")
    monkeypatch.setattr(perf, "CHECKOUT_PERF_ANALYZER", checkout)
    assert perf.find_perf_analyzer() == checkout
    given = executable(tmp_path / "mine", "#!/bin/sh\n")
    assert perf.find_perf_analyzer(str(given)) == given


def test_a_failing_perf_analyzer_is_reported_with_its_own_message(tmp_path):
    # A stand-in binary: what the bench makes of a failed run is the point.
    failing = executable(tmp_path / "perf_analyzer", "#!/bin/sh\necho 'error: failed to create shared memory region' >&2\n"
                                                     "exit 99\n")
    with pytest.raises(RuntimeError) as e:
        perf.perf_analyzer(failing, "perf_analyzer gRPC, concurrency 8", "m", "grpc", "127.0.0.1:1", 8, 10, "system")
    assert "perf_analyzer for 'perf_analyzer gRPC, concurrency 8' failed (exit code 99)" in str(e.value)
    assert "failed to create shared memory region" in str(e.value)


def test_the_run_passes_the_model_protocol_memory_and_time_windows(tmp_path):
    # A stand-in that records its arguments and writes the report perf_analyzer would.
    args = tmp_path / "args"
    fake = executable(tmp_path / "perf_analyzer", f"""#!/bin/sh
printf '%s\\n' "$@" > {args}
while [ $# -gt 0 ]; do [ "$1" = -f ] && cat > "$2" <<'CSV'
{REPORT}CSV
shift; done
""")
    r = perf.perf_analyzer(fake, "label", "efficientnet_lite0_onnx", "http", "127.0.0.1:8000", 8, 5, "system")
    assert r.images_per_s == 31.9553 and not math.isnan(r.p99_ms)
    given = args.read_text().split("\n")
    for flag, value in (("-m", "efficientnet_lite0_onnx"), ("-i", "http"), ("-u", "127.0.0.1:8000"),
                        ("--concurrency-range", "8"), ("--shared-memory", "system"),
                        ("--measurement-mode", "time_windows"), ("--max-trials", str(perf.WINDOWS)),
                        ("--measurement-interval", str(round(5000 / perf.WINDOWS)))):  # 5 s in WINDOWS windows
        assert given[given.index(flag) + 1] == value, given
    assert os.path.basename(given[given.index("-f") + 1]) == "report.csv"
