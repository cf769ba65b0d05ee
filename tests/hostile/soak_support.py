"""The soak tier's parts: clients that run in their own threads until told to stop, a tally of
their requests, errors and wrong answers, RSS samples of the server process, and the RSS check.

A client is a name and a `start()` run in its thread: it opens its connections and returns the
function that sends one request and checks the answer (raising `WrongAnswer` when the answer is
wrong, anything else when the request failed).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from statistics import fmean
from typing import Callable, Sequence

import psutil

MB = 1024 * 1024
MAX_SPREAD = 32 * MB  # max - mean of the samples after the warm-up
MAX_GROWTH = 1.10  # end / start of the samples after the warm-up


class WrongAnswer(AssertionError):
    """The server answered, but not with the right value."""


@dataclass
class Client:
    name: str
    start: Callable[[], Callable[[], None]]
    pause: float = 0.0  # seconds between requests (the scrapers)


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    wrong: int = 0
    first_problems: list[str] = field(default_factory=list)  # the first few, for the report

    def problem(self, kind: str, error: BaseException) -> None:
        if len(self.first_problems) < 5:
            self.first_problems.append(f"{kind} after {self.requests} requests: {type(error).__name__}: {error}"[:500])


@dataclass(frozen=True)
class RSS:
    """Resident set size figures (bytes) over the samples taken after the warm-up."""

    start: int
    mean: float
    max: int
    end: int

    @classmethod
    def of(cls, samples: Sequence[int], warmup: int) -> RSS:
        """`warmup`: how many samples to leave out (allocator pools and arenas grow first)."""
        steady = list(samples[warmup:])
        if len(steady) < 2:
            raise ValueError(f"{len(samples)} RSS samples leave fewer than 2 after a warm-up of {warmup}")
        return cls(steady[0], fmean(steady), max(steady), steady[-1])

    def problems(self, max_spread: int = MAX_SPREAD, max_growth: float = MAX_GROWTH) -> list[str]:
        """What is wrong with these figures (nothing: an empty list)."""
        found = []
        if self.max - self.mean > max_spread:
            found.append(f"RSS max - mean is {(self.max - self.mean) / MB:.1f} MB (limit {max_spread / MB:.0f} MB)")
        if self.end / self.start > max_growth:
            found.append(f"RSS end / start is {self.end / self.start:.3f} (limit {max_growth})")
        return found

    def __str__(self) -> str:
        return (f"RSS start {self.start / MB:.1f} MB, mean {self.mean / MB:.1f} MB, max {self.max / MB:.1f} MB,"
                f" end {self.end / MB:.1f} MB")


def rss(pid: int) -> int:
    """The process's resident set size, its children's included."""
    process = psutil.Process(pid)
    return process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))


def soak(clients: Sequence[Client], pid: int, seconds: float) -> tuple[dict[str, Tally], list[int]]:
    """Run every client for `seconds` while sampling the RSS of process `pid` every second;
    returns each client's tally and the samples."""
    stop = threading.Event()
    tallies = {c.name: Tally() for c in clients}
    samples: list[int] = []

    def drive(client: Client, tally: Tally) -> None:
        try:
            request = client.start()
        except Exception as e:  # could not even connect
            tally.errors += 1
            tally.problem("start", e)
            return
        while not stop.is_set():
            try:
                request()
            except WrongAnswer as e:
                tally.wrong += 1
                tally.problem("wrong answer", e)
            except Exception as e:
                tally.errors += 1
                tally.problem("error", e)
            tally.requests += 1
            if client.pause:
                stop.wait(client.pause)

    def sample() -> None:
        while True:
            samples.append(rss(pid))
            if stop.wait(1.0):
                return

    threads = [threading.Thread(target=drive, args=(c, tallies[c.name]), name=c.name) for c in clients]
    threads.append(threading.Thread(target=sample, name="rss"))
    for thread in threads:
        thread.start()
    time.sleep(seconds)  # the soak's length; nothing is timed
    stop.set()
    for thread in threads:
        thread.join()
    return tallies, samples
