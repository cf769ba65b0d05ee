"""Where a served call's CPU went: threads read from /proc, and per-call shares of the server's
event loop, its other threads and the load generator."""

from __future__ import annotations

import os
import threading

import pytest

from triserve.bench.cpu import CPUPerCall, per_call, thread_seconds

linux = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc (Linux)")


@linux
def test_a_busy_thread_of_this_process_shows_its_cpu_seconds():
    worked, done = threading.Event(), threading.Event()
    ident: dict[str, int] = {}

    def spin() -> None:
        ident["tid"] = threading.get_native_id()
        total = 0
        for i in range(3_000_000):  # a fixed amount of work (a tenth of a second or more), however busy the machine
            total += i
        worked.set()
        done.wait()  # alive while it is read

    before = thread_seconds(os.getpid())
    thread = threading.Thread(target=spin)
    thread.start()
    worked.wait()
    seconds = thread_seconds(os.getpid())
    done.set()
    thread.join()
    assert before is not None and seconds is not None
    assert os.getpid() in before  # the main thread's id is the process id
    assert ident["tid"] not in before and seconds[ident["tid"]] > 0


def test_a_process_without_proc_entries_measures_nothing():
    assert thread_seconds(2**22 + 12345) is None  # above Linux's largest process id


def test_shares_per_call_split_the_main_thread_from_the_others():
    pid = 100
    before = {100: 1.0, 101: 2.0, 102: 5.0}
    after = {100: 1.5, 101: 4.0, 103: 0.5}  # 102 ended (its time is gone with it), 103 started
    shares = per_call(pid, before, after, client_seconds=0.25, calls=500)
    assert shares == CPUPerCall(event_loop_ms=1.0, other_threads_ms=5.0, load_generator_ms=0.5)
    assert shares.describe() == "server event loop 1.00 ms, its other threads 5.00 ms, load generator 0.50 ms"
