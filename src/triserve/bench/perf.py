"""Triton's perf_analyzer as a load generator of the benchmark: the only client here that sends
tensors through system shared memory (`--shared-memory system`), so the shm section runs it.

It is not a Python package: `scripts/setup-perf-analyzer` installs the binary into `.perf-venv`
of the source checkout (tritonclient[all]'s wheel ships it), behind a wrapper that sets the
library path it needs. A perf_analyzer that is missing or fails is an error naming what happened;
no number stands in for it.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from triserve.bench.results import Result, progress

# scripts/setup-perf-analyzer's wrapper, in the checkout this package runs from (src/triserve/bench/perf.py).
CHECKOUT_PERF_ANALYZER = Path(__file__).resolve().parents[3] / ".perf-venv" / "bin" / "perf-analyzer"
NAMES_ON_PATH = ("perf_analyzer", "perf-analyzer")
# Time windows, every one taken as stable (a busy machine never "stabilizes" within the default
# 10%): perf_analyzer averages WINDOWS windows. Its request-count mode is no substitute: it
# finishes on a whole second, so every figure came out as N requests / whole seconds.
WINDOWS = 3
MIN_WINDOW_MS = 500


def find_perf_analyzer(given: str | None = None) -> Path:
    """`given`, else the checkout's .perf-venv wrapper, else perf_analyzer on PATH."""
    if given:
        path = Path(given)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise RuntimeError(f"perf_analyzer not found: {given} is not an executable file; no shared-memory"
                           " figures were measured")
    if CHECKOUT_PERF_ANALYZER.is_file() and os.access(CHECKOUT_PERF_ANALYZER, os.X_OK):
        return CHECKOUT_PERF_ANALYZER
    for name in NAMES_ON_PATH:
        if found := shutil.which(name):
            return Path(found)
    raise RuntimeError(
        f"perf_analyzer not found (neither .perf-venv/bin/perf-analyzer of the source checkout nor"
        f" {' or '.join(NAMES_ON_PATH)} on PATH): install it with scripts/setup-perf-analyzer or pass"
        " --perf-analyzer PATH; no shared-memory figures were measured")


def parse_csv(label: str, text: str) -> Result:
    """perf_analyzer's `-f` report (one row per concurrency; latencies in microseconds) as a Result."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if len(rows) != 1:
        raise RuntimeError(f"perf_analyzer's report for '{label}' has {len(rows)} rows, not one:\n{text[-1000:]}")
    (row,) = rows
    try:
        return Result(label, float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000,
                      float(row["p99 latency"]) / 1000)
    except (KeyError, TypeError, ValueError) as e:
        raise RuntimeError(f"perf_analyzer's report for '{label}' lacks {e}:\n{text[-1000:]}") from None


def perf_analyzer(binary: Path, label: str, model: str, protocol: str, url: str, concurrency: int,
                  seconds: float, shared_memory: str = "none", timeout: float = 600) -> Result:
    """About `seconds` of inferences of `model` with random data at `concurrency` over `protocol`
    (http or grpc), tensors in the body or through `shared_memory` ("system")."""
    window_ms = max(MIN_WINDOW_MS, round(seconds * 1000 / WINDOWS))
    with tempfile.TemporaryDirectory(prefix="triserve-perf-") as tmp:
        report = Path(tmp) / "report.csv"
        command = [str(binary), "-m", model, "-i", protocol, "-u", url, "--concurrency-range", str(concurrency),
                   "--measurement-mode", "time_windows", "--measurement-interval", str(window_ms),
                   "--stability-percentage", "1000", "--max-trials", str(WINDOWS), "--shared-memory", shared_memory,
                   "-f", str(report)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"perf_analyzer for '{label}' did not finish in {timeout:.0f} s") from None
        if done.returncode != 0 or not report.is_file():
            output = (done.stdout + done.stderr).strip()[-2000:]
            raise RuntimeError(f"perf_analyzer for '{label}' failed (exit code {done.returncode}): {output}")
        return progress(parse_csv(label, report.read_text()))
