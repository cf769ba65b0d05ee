"""The worker-process pool: jobs run in other processes, first come first served; a process
that dies fails only its own job, and the jobs that wait behind it run in its replacement.
Predecoded contents travel compactly and raise, in the server, the error reading them raised."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from triserve.errors import Code, ServerError, invalid
from triserve.protocols.transport.processes import Expected, Predecoded, ProcessPool, WorkerStopped

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- what the worker processes run (module level: they are pickled by reference) ------------
def pid_and(value: int) -> tuple[int, int]:
    return os.getpid(), value * 2


def refuse(message: str) -> None:
    raise invalid(message)


def die() -> None:
    os._exit(3)  # as a process killed for memory would


def wait_for(gate: str, started: str) -> int:
    """Tell the test it runs (a file), then wait until the test opens the gate (another file)."""
    Path(started).touch()
    while not Path(gate).exists():
        time.sleep(0.01)
    return os.getpid()


async def until_exists(path: Path) -> None:
    while not path.exists():  # another process makes it: nothing in this loop to wait on
        await asyncio.sleep(0.01)


# -- the pool ---------------------------------------------------------------------------------
async def test_jobs_run_in_other_processes_which_are_reused():
    pool = ProcessPool(2)
    try:
        results = await asyncio.gather(*(pool.run(pid_and, i) for i in range(6)))
        assert [doubled for _, doubled in results] == [0, 2, 4, 6, 8, 10]
        pids = {pid for pid, _ in results}
        assert os.getpid() not in pids
        assert 1 <= len(pids) <= 2  # at most two, each reused
    finally:
        pool.shutdown()


async def test_every_process_starts_with_the_first_job():
    pool = ProcessPool(2)
    before = set(multiprocessing.active_children())
    try:
        await pool.run(pid_and, 1)
        started = set(multiprocessing.active_children()) - before
        assert len(started) == 2  # the second too: the pool's memory does not grow later, when two jobs overlap
    finally:
        pool.shutdown()


async def test_a_server_error_raised_in_a_worker_keeps_its_message_and_code():
    pool = ProcessPool(1)
    try:
        with pytest.raises(ServerError) as caught:
            await pool.run(refuse, "input 'x': no")
        assert (caught.value.message, caught.value.code) == ("input 'x': no", Code.INVALID_ARG)
        assert (await pool.run(pid_and, 1))[1] == 2  # the worker lives on
    finally:
        pool.shutdown()


async def test_a_worker_that_dies_fails_only_its_job_and_the_queued_ones_run_in_its_replacement(tmp_path):
    pool = ProcessPool(1)
    try:
        gate, started = tmp_path / "gate", tmp_path / "started"
        first = asyncio.ensure_future(pool.run(wait_for, str(gate), str(started)))
        await until_exists(started)  # the one process is busy: what follows waits in the pool's queue
        doomed = asyncio.ensure_future(pool.run(die))
        queued = [asyncio.ensure_future(pool.run(pid_and, i)) for i in range(3)]
        await asyncio.sleep(0)
        assert not doomed.done() and not any(q.done() for q in queued)
        gate.touch()
        first_pid = await first
        with pytest.raises(WorkerStopped) as caught:
            await doomed
        assert caught.value.code == Code.UNAVAILABLE
        assert "stopped before it finished" in caught.value.message
        results = await asyncio.gather(*queued)
        assert [doubled for _, doubled in results] == [0, 2, 4]
        assert {pid for pid, _ in results} != {first_pid}  # a new process
        assert pool.crashes == 2  # it was tried once more, in a new process
    finally:
        pool.shutdown()


async def test_a_worker_that_died_idle_is_replaced_for_the_next_job():
    pool = ProcessPool(1)
    try:
        pid, _ = await pool.run(pid_and, 1)
        os.kill(pid, signal.SIGKILL)
        new_pid, doubled = await pool.run(pid_and, 2)
        assert (doubled, new_pid != pid) == (4, True)
    finally:
        pool.shutdown()


async def test_a_caller_that_stops_waiting_does_not_lose_the_slot(tmp_path):
    pool = ProcessPool(1)
    try:
        gate, started = tmp_path / "gate", tmp_path / "started"
        busy = asyncio.ensure_future(pool.run(wait_for, str(gate), str(started)))
        await until_exists(started)
        given_up = asyncio.ensure_future(pool.run(pid_and, 1))
        await asyncio.sleep(0)
        given_up.cancel()  # waiting in the queue
        busy_caller_gone = busy.cancel()  # running: its process finishes, then the slot is free
        assert busy_caller_gone
        gate.touch()
        assert (await asyncio.wait_for(pool.run(pid_and, 21), 60))[1] == 42
    finally:
        pool.shutdown()


# -- predecoded contents ----------------------------------------------------------------------
def test_bytes_arrays_travel_packed_and_come_back_equal():
    array = np.empty(6, dtype=np.object_)
    array[:] = [b"", b"a", b"bc", b"\x00\xff", b"d" * 1000, b"e"]
    predecoded = Predecoded(None, array=array.reshape(2, 3))
    assert predecoded._packed is not None and predecoded._array is None
    value = predecoded.value()
    assert value.shape == (2, 3) and value.dtype == np.object_
    assert value.ravel().tolist() == array.tolist()


def test_number_arrays_travel_as_they_are():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert Predecoded(None, array=array).value() is array


def test_the_error_reading_raised_is_raised_when_the_value_is_taken():
    predecoded = Predecoded.of(None, refuse, "input 'x': bad data")
    with pytest.raises(ServerError, match="^input 'x': bad data$") as caught:
        predecoded.value()
    assert caught.value.code == Code.INVALID_ARG
    with pytest.raises(ServerError, match="were not read") as caught:
        Predecoded.skipped(None).value()
    assert caught.value.code == Code.INTERNAL


def test_what_contents_were_read_as_must_be_what_the_server_reads_them_as():
    predecoded = Predecoded(("FP32", (1, 5)), array=np.zeros((1, 5), np.float32))
    assert predecoded.value(("FP32", (1, 5))).shape == (1, 5)
    with pytest.raises(ServerError, match="model changed") as caught:
        predecoded.value(("INT32", (1, 5)))
    assert caught.value.code == Code.UNAVAILABLE


def test_contents_worth_reading_are_those_the_models_checks_would_let_through():
    expected = Expected({"x": ("FP32", (-1, 5)), "s": ("BYTES", (3,))}, max_batch_size=4)
    assert expected.worth_reading("x", "FP32", [4, 7, 5])
    assert not expected.worth_reading("x", "FP32", [5, 7, 5])  # batch over 4
    assert not expected.worth_reading("x", "FP32", [0, 7, 5])
    assert not expected.worth_reading("x", "FP32", [4, 7, 6])
    assert not expected.worth_reading("x", "BYTES", [4, 7, 5])
    assert not expected.worth_reading("y", "FP32", [4, 7, 5])
    assert not expected.worth_reading("x", "FP32", "[4, 7, 5]")
    assert not expected.worth_reading("x", "FP32", [4, -7, 5])
    assert expected.worth_reading("s", "BYTES", [2, 3])
    split = Expected({"x": ("FP32", (5,))}, max_batch_size=4, split=True)
    assert split.worth_reading("x", "FP32", [1000, 5])  # the data plane splits large batches
    unbatched = Expected({"x": ("FP32", (2, -1))}, max_batch_size=0)
    assert unbatched.worth_reading("x", "FP32", [2, 9])
    assert not unbatched.worth_reading("x", "FP32", [1, 2, 9])
