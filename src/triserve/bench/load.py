"""The load generator: N clients back to back, in a separate process, with pluggable senders.

A sender sends one pre-built request per call and keeps the client's own work small, since the
client's CPU competes with the server's on the same cores: raw HTTP/1.1 bytes over keep-alive
connections (binary v2 tensors, TorchServe PUTs), or a ModelInferRequest on one grpc.aio channel
(as tritonclient's aio client shares one).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import queue
import sys
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from triserve.bench.cpu import per_call, thread_seconds
from triserve.bench.results import MIN_COMPLETED, Result, progress, result

HOST = "127.0.0.1"

Send = Callable[[], Awaitable[str | None]]  # one request: None when it succeeded, else what failed


def http_request(method: str, path: str, port: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise RuntimeError(f"response without Content-Length: {head[:200]!r}")


@dataclass
class HTTPSender:
    """The same pre-built HTTP/1.1 request bytes, one keep-alive connection per client."""

    port: int
    request: bytes

    @contextlib.asynccontextmanager
    async def clients(self, count: int) -> AsyncIterator[list[Send]]:
        streams = [await asyncio.open_connection(HOST, self.port) for _ in range(count)]
        try:
            yield [functools.partial(self._send, reader, writer) for reader, writer in streams]
        finally:
            for _, writer in streams:
                writer.close()

    async def _send(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(_content_length(head))
        return None if head.startswith(b"HTTP/1.1 200") else head.split(b"\r\n", 1)[0].decode()


@dataclass
class GRPCSender:
    """A pre-built ModelInferRequest (serialized, to cross the process boundary) on one shared channel."""

    port: int
    request: bytes

    @contextlib.asynccontextmanager
    async def clients(self, count: int) -> AsyncIterator[list[Send]]:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        request = service_pb2.ModelInferRequest.FromString(self.request)
        async with grpc.aio.insecure_channel(f"{HOST}:{self.port}") as channel:
            infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

            async def send() -> str | None:
                try:
                    await infer(request)
                except grpc.aio.AioRpcError as e:
                    return f"{e.code().name}: {e.details()}"
                return None

            yield [send] * count


Sender = HTTPSender | GRPCSender


@dataclass
class Drive:
    """What the load process measured: latencies of the requests started in the measured
    window, its length and the failures; and, over the whole drive (warm-up too), the calls
    made and the load process's CPU seconds."""

    latencies: list[float]
    elapsed: float
    errors: list[str]
    calls: int
    cpu_seconds: float


async def _drive(sender: Sender, concurrency: int, seconds: float) -> Drive:
    """The window lasts `seconds`, and longer until MIN_COMPLETED of its requests have completed."""
    latencies: list[float] = []
    errors: list[str] = []
    calls = 0
    cpu = time.process_time()
    async with sender.clients(concurrency) as sends:
        start = time.perf_counter() + min(1.0, seconds / 4)  # warm up first, on the same connections
        stop = start + seconds

        async def loop(send: Send) -> None:
            nonlocal calls
            while (t := time.perf_counter()) < stop or len(latencies) + len(errors) < MIN_COMPLETED:
                error = await send()
                calls += 1
                if t < start:
                    continue
                if error:
                    errors.append(error)
                else:
                    latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(loop(send) for send in sends))
        elapsed = time.perf_counter() - start
    return Drive(latencies, elapsed, errors, calls, time.process_time() - cpu)


def _load_process(sender: Sender, concurrency: int, seconds: float, results: Any) -> None:
    import uvloop

    results.put(uvloop.run(_drive(sender, concurrency, seconds)))


def served(label: str, sender: Sender, concurrency: int, seconds: float, server_pid: int | None = None) -> Result:
    """`concurrency` clients sending back to back for `seconds`, from a separate process; with
    `server_pid`, the result also says where the CPU per call went (bench.cpu)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_load_process, args=(sender, concurrency, seconds, results))
    before = thread_seconds(server_pid) if server_pid else None
    process.start()
    deadline = time.monotonic() + seconds + 120
    while True:
        try:
            drive: Drive = results.get(timeout=1)
            break
        except queue.Empty:
            if not process.is_alive() or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the load generator for '{label}' gave no result (exit code {process.exitcode})")
    after = thread_seconds(server_pid) if server_pid else None
    process.join()
    if drive.errors:
        print(f"  {label}: {len(drive.errors)} failed requests, first: {drive.errors[0]}", file=sys.stderr)
    measured = result(label, drive.latencies, drive.elapsed)
    if server_pid and before is not None and after is not None:
        measured.cpu = per_call(server_pid, before, after, drive.cpu_seconds, drive.calls)
    return progress(measured)
