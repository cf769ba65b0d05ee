"""`triserve bench`: served throughput and latency next to raw in-process onnxruntime, in one run.

The machine is shared and noisy, so absolute numbers drift between runs; the served/raw ratio,
measured minutes apart on the same machine, is the figure to compare.

Raw: onnxruntime sessions in this process, threads x sessions x batch size, best kept.
Served: a `triserve serve` subprocess; a load generator in another process keeps N binary-tensor
requests in flight over keep-alive HTTP connections (the client's own CPU counts against the
server, as it would for any client on the same 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Result:
    label: str
    images_per_s: float
    p50_ms: float
    p99_ms: float

    def row(self, raw: float) -> str:
        ratio = self.images_per_s / raw if raw else float("nan")
        return f"| {self.label} | {self.images_per_s:.1f} | {self.p50_ms:.2f} | {self.p99_ms:.2f} | {ratio:.2f} |"


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    if not latencies:
        return float("nan"), float("nan")
    arr = np.array(latencies) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


# -- raw onnxruntime -------------------------------------------------------------------------
def raw_onnxruntime(model_file: Path, input_name: str, sample: np.ndarray, sessions: int, threads: int,
                    batch: int, seconds: float) -> Result:
    import onnxruntime as ort

    def session():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    x = np.ascontiguousarray(np.repeat(sample[None], batch, axis=0))
    runners = [session() for _ in range(sessions)]
    for s in runners:
        s.run(None, {input_name: x})
    latencies: list[list[float]] = [[] for _ in runners]
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        s = runners[i]
        while (t := time.perf_counter()) < stop:
            s.run(None, {input_name: x})
            latencies[i].append(time.perf_counter() - t)

    start = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(sessions)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    flat = [v for per in latencies for v in per]
    p50, p99 = _percentiles(flat)
    return Result(f"raw onnxruntime {sessions} session(s) x {threads} thread(s), batch {batch}",
                  len(flat) * batch / elapsed, p50, p99)


# -- load generator --------------------------------------------------------------------------
def _infer_request(model: str, input_name: str, sample: np.ndarray, host: str, port: int) -> bytes:
    data = sample[None].astype(np.float32).tobytes()
    header = json.dumps({
        "inputs": [{"name": input_name, "shape": [1, *sample.shape], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }).encode()
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(header) + len(data)}\r\n\r\n"
    ).encode()
    return head + header + data


async def _client(host: str, port: int, request: bytes, stop: float, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n", 1)[0].decode())
                continue
            latencies.append(time.perf_counter() - t)
    finally:
        writer.close()


def _load(host: str, port: int, request: bytes, concurrency: int, seconds: float, queue) -> None:
    import uvloop

    async def main() -> None:
        latencies: list[float] = []
        errors: list[str] = []
        warm_stop = time.perf_counter() + min(1.0, seconds / 4)
        await asyncio.gather(*(_client(host, port, request, warm_stop, [], errors) for _ in range(concurrency)))
        start = time.perf_counter()
        stop = start + seconds
        await asyncio.gather(*(_client(host, port, request, stop, latencies, errors) for _ in range(concurrency)))
        queue.put((latencies, time.perf_counter() - start, errors))

    uvloop.run(main())


def served(label: str, model: str, input_name: str, sample: np.ndarray, port: int, concurrency: int,
           seconds: float) -> Result:
    queue = multiprocessing.get_context("spawn").Queue()
    request = _infer_request(model, input_name, sample, "127.0.0.1", port)
    proc = multiprocessing.get_context("spawn").Process(
        target=_load, args=("127.0.0.1", port, request, concurrency, seconds, queue))
    proc.start()
    latencies, elapsed, errors = queue.get()
    proc.join()
    if errors:
        print(f"  {len(errors)} failed requests, first: {errors[0]}", file=sys.stderr)
    p50, p99 = _percentiles(latencies)
    return Result(f"{label}, concurrency {concurrency}", len(latencies) / elapsed, p50, p99)


# -- the command -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _repository_variants(source: Path, model: str, out: Path) -> None:
    """The model as configured, and a copy without dynamic_batching."""
    shutil.copytree(source / model, out / model)
    plain = out / f"{model}_no_batching"
    shutil.copytree(source / model, plain)
    config = (plain / "config.pbtxt").read_text()
    lines = config.replace("dynamic_batching { }", "").replace(f'name: "{model}"', f'name: "{model}_no_batching"')
    (plain / "config.pbtxt").write_text(lines)


def _start_server(repo: Path, port: int) -> subprocess.Popen:
    from triserve.server import FRONTENDS

    ports = []
    for name in FRONTENDS:
        ports += [f"--{name.replace('_', '-')}-port", str(port if name == "http" else 0)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "triserve", "serve", "--model-repository", str(repo), *ports, "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()}")
        time.sleep(0.2)
    raise TimeoutError("server did not become ready")


def bench_main(args: argparse.Namespace) -> int:
    from PIL import Image

    from triserve.repository.triton import read_model

    repo = Path(args.model_repository)
    spec = read_model(args.model_name, repo / args.model_name)
    input_name = spec.config.input[0].name
    model_file = spec.versions[max(spec.versions)] / "model.onnx"
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    try:
        from skimage import data

        image = Image.fromarray(data.chelsea())
    except ImportError:
        image = Image.new("RGB", (300, 300), (128, 64, 32))
    sample = np.ascontiguousarray(np.asarray(image.convert("RGB").resize((224, 224)), np.float32).transpose(2, 0, 1))

    cores = len(os.sched_getaffinity(0))
    print(f"# triserve bench: {args.model_name}, {cores} cores, {args.seconds:.0f} s per measurement\n")
    results: list[Result] = []
    configs = sorted({(cores, 1), (1, cores)})
    for sessions, threads in configs:
        for batch in (1, 4):
            r = raw_onnxruntime(model_file, input_name, sample, sessions, threads, batch, args.seconds)
            print(f"  {r.label}: {r.images_per_s:.1f} images/s", file=sys.stderr)
            results.append(r)
    raw_best = max(r.images_per_s for r in results)

    with tempfile.TemporaryDirectory() as tmp:
        _repository_variants(repo, args.model_name, Path(tmp))
        port = _free_port()
        server = _start_server(Path(tmp), port)
        try:
            for model, label in ((args.model_name, "served, binary HTTP, dynamic batching"),
                                 (f"{args.model_name}_no_batching", "served, binary HTTP, no batching")):
                for c in concurrencies:
                    r = served(label, model, input_name, sample, port, c, args.seconds)
                    print(f"  {r.label}: {r.images_per_s:.1f} images/s", file=sys.stderr)
                    results.append(r)
        finally:
            server.terminate()
            server.wait(30)

    print("| measurement | images/s | p50 ms | p99 ms | / best raw |")
    print("|---|---|---|---|---|")
    for r in results:
        print(r.row(raw_best))
    c1 = [r for r in results if r.label.endswith("concurrency 1")]
    if c1:
        # One request at a time runs on one single-threaded instance: compare with the same, raw.
        raw_one = raw_onnxruntime(model_file, input_name, sample, 1, 1, 1, min(args.seconds, 3))
        print(f"\nadded p50 latency at concurrency 1 (raw 1 session x 1 thread p50 {raw_one.p50_ms:.2f} ms): "
              + ", ".join(f"{r.label}: {r.p50_ms - raw_one.p50_ms:+.2f} ms" for r in c1))
    return 0
