"""Where a served call's CPU went: threads read from /proc, and per-call shares of the server's
event loop, its other threads and the load generator."""

from __future__ import annotations

import os
import threading

import pytest

from triserve.bench.cpu import CPUPerCall, per_call, thread_seconds

linux = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc (Linux)")


@linux
def test_each_live_thread_of_the_process_is_read_under_its_thread_id():
    started, done = threading.Event(), threading.Event()
    ident: dict[str, int] = {}

    def work() -> None:
        ident["tid"] = threading.get_native_id()
        started.set()
        done.wait()  # alive while it is read

    before = thread_seconds(os.getpid())
    thread = threading.Thread(target=work)
    thread.start()
    started.wait()
    during = thread_seconds(os.getpid())
    done.set()
    thread.join()
    after = thread_seconds(os.getpid())
    assert before is not None and during is not None and after is not None
    assert os.getpid() in before  # the main thread's id is the process id
    assert ident["tid"] not in before and ident["tid"] in during and ident["tid"] not in after
    assert during[os.getpid()] >= before[os.getpid()]  # CPU seconds only grow


def test_a_process_without_proc_entries_measures_nothing():
    # no process has this id: Linux's pid_max is at most 2**22
    assert thread_seconds(2**22 + 12345) is None


def test_shares_per_call_split_the_main_thread_from_the_others():
    pid = 100
    before = {100: 1.0, 101: 2.0, 102: 5.0}
    after = {100: 1.5, 101: 4.0, 103: 0.5}  # 102 ended (its time is gone with it), 103 started
    shares = per_call(pid, before, after, client_seconds=0.25, calls=500)
    assert shares == CPUPerCall(event_loop_ms=1.0, other_threads_ms=5.0, load_generator_ms=0.5)
    assert shares.describe() == "server event loop 1.00 ms, its other threads 5.00 ms, load generator 0.50 ms"
