"""Where a served call's CPU goes besides the model: the server's event loop (its main thread),
its other threads (model executions, decoding, gRPC's), and the load generator, which shares the
cores. Read from /proc (Linux); elsewhere nothing is measured."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CPUPerCall:
    """Milliseconds of CPU (user + system) per completed call."""

    event_loop_ms: float
    other_threads_ms: float
    load_generator_ms: float

    def describe(self) -> str:
        return (f"server event loop {self.event_loop_ms:.2f} ms, its other threads {self.other_threads_ms:.2f} ms,"
                f" load generator {self.load_generator_ms:.2f} ms")


def thread_seconds(pid: int) -> dict[int, float] | None:
    """CPU seconds so far of each live thread of process `pid`, by thread id; None without /proc."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return None
    seconds = {}
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    return seconds


def per_call(pid: int, before: dict[int, float], after: dict[int, float], client_seconds: float,
             calls: int) -> CPUPerCall:
    """The server's CPU between two `thread_seconds` readings and the load generator's, per call.
    A thread that ended in between is not counted (its time is lost with it)."""
    spent = {tid: s - before.get(tid, 0.0) for tid, s in after.items()}
    loop = spent.pop(pid, 0.0)
    per = 1000 / max(calls, 1)
    return CPUPerCall(loop * per, sum(spent.values()) * per, client_seconds * per)
