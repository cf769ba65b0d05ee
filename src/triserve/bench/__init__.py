"""`triserve bench`: served throughput and latency next to raw in-process inference, in one run.

Sections (`--sections`, default all but ray), each a markdown table with every served measurement as a
ratio to a raw baseline measured in the same run, and summary lines for the aims:

- onnx: raw onnxruntime (instances x threads x batch, best kept) vs binary HTTP, with and
  without dynamic batching, at `--concurrency`;
- grpc: KServe v2 gRPC vs binary HTTP at concurrency 1 and 16 (aim: gRPC p50 at concurrency 1
  within 1 ms of raw onnxruntime with one session of one thread);
- torchserve: JPEGs PUT to `/predictions/<model>` of a TorchServe archive at concurrency 1 and 8
  vs the in-process ceiling: decode, the archive's handler and its model on the server's threads
  (aim: at least 0.6 of it at concurrency 1 and 0.9 at 8);
- backends: each backend's example over binary HTTP at concurrency 8 vs its framework called
  in-process with the server's thread configuration (two instances x one thread on 2 cores);
- sweep: binary HTTP at concurrency 1, 2, 4, 8, 16, 32 for the default layout and for one
  instance with a thread per core, flagging any point after a layout's best that lost more
  than 10% of it;
- openvino: the ONNX model converted to OpenVINO IR: raw OpenVINO vs raw onnxruntime (the
  server's layout) and served OpenVINO (`backend: "openvino"`) over binary HTTP (aim: served at
  least 0.9 of raw OpenVINO);
- shm: Triton's perf_analyzer over HTTP and gRPC with `--shared-memory system` and with tensors in
  the body, at concurrency 8, beside the bench's binary HTTP client, vs the best raw onnxruntime;
- ensemble: a JPEG to the example ensemble efficientnet_lite0_jpeg over v2 HTTP (BYTES) and
  TorchServe's `/predictions`, and to the example archive's `/predictions`, at concurrency 8, vs
  decode + preprocessing + onnxruntime in-process on the server's threads;
- ray (only when asked, needs `triserve[ray]`): v2 requests through Ray Serve on a local
  single-node instance beside `triserve serve`, at concurrency 1 and 8, with the time added
  per request.

The machine is shared and noisy, so absolute numbers drift between runs; the served/raw ratio,
measured minutes apart on the same machine, is the figure to compare. Servers are `triserve
serve` subprocesses with only the front ends a section needs; the load generator runs in another
process (load.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def bench_main(args: argparse.Namespace) -> int:
    from triserve.bench.sections import AIMS, SECTIONS, Bench
    from triserve.errors import ServerError

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        print(f"triserve bench: unknown section(s) {', '.join(unknown) or '(none given)'}; choose from"
              f" {','.join(SECTIONS)}", file=sys.stderr)
        return 2
    failed = 0
    summary: list[str] = []
    with tempfile.TemporaryDirectory(prefix="triserve-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        print(f"# triserve bench: {bench.cores} cores, {args.seconds:g} s per measurement\n", flush=True)
        aims = [AIMS[s] for s in sections if s in AIMS]
        if aims:
            print("Aims: " + "; ".join(aims) + ".\n", flush=True)
        for name in sections:
            try:
                table = SECTIONS[name](bench)
            except (ServerError, RuntimeError, OSError, ImportError) as e:  # one section failing leaves the others
                message = e.message if isinstance(e, ServerError) else str(e)
                print(f"## {name}: failed: {message}\n", flush=True)
                summary.append(f"{name}: failed")
                failed += 1
                continue
            print(table.render(), flush=True)
            empty = table.without_throughput()
            if empty:  # a measurement in which no call completed: the run proves nothing
                print(f"## {name}: failed: no throughput (0 images/s or nan) in: {'; '.join(empty)}\n", flush=True)
                summary.append(f"{name}: failed: no throughput in {len(empty)} measurement(s)")
                failed += 1
                continue
            summary += table.summary
    print("## summary\n")
    print("\n".join(f"- {line}" for line in summary))
    return 1 if failed else 0
