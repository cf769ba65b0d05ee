"""A framework's process-wide thread pools: set once by the first model, kept for later ones."""

from __future__ import annotations

import logging

from triserve.backends import ProcessThreads


class FakePools:
    """Stands in for a framework's thread-pool setters, recording each call."""

    def __init__(self, keeps: tuple[int, int] | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.keeps = keeps  # what a framework that already started keeps instead

    def apply(self, intra: int, inter: int) -> tuple[int, int]:
        self.calls.append((intra, inter))
        return self.keeps or (intra, inter)


def test_the_first_model_sets_the_pools_once(caplog):
    pools = FakePools()
    threads = ProcessThreads("torch", "TorchScript model", pools.apply)
    with caplog.at_level(logging.INFO, logger="triserve"):
        threads.request("first", 2, 1)
        threads.request("second", 2, 1)
    assert pools.calls == [(2, 1)]
    assert threads.counts == (2, 1)
    assert "torch: 2 intra-op thread(s), 1 inter-op thread(s) for the whole process" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_later_model_asking_for_other_counts_is_warned_and_keeps_the_first(caplog):
    pools = FakePools()
    threads = ProcessThreads("tensorflow", "SavedModel", pools.apply)
    threads.request("first", 1, 2)
    with caplog.at_level(logging.WARNING, logger="triserve"):
        threads.request("greedy", 4, 4)
    assert pools.calls == [(1, 2)]
    assert threads.counts == (1, 2)
    assert "model 'greedy' asks for 4 intra-op / 4 inter-op tensorflow threads" in caplog.text
    assert "already set to 1 / 2 by the first SavedModel" in caplog.text


def test_the_counts_are_what_the_framework_really_kept():
    pools = FakePools(keeps=(3, 3))  # the framework had started: its pools were fixed
    threads = ProcessThreads("torch", "TorchScript model", pools.apply)
    threads.request("first", 1, 1)
    assert threads.counts == (3, 3)
