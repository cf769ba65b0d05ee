"""Fixtures shared by the protocol packages' tests."""

from __future__ import annotations

import orjson
import pytest


@pytest.fixture
def parsed(monkeypatch) -> list[int]:
    """The size of every text orjson.loads is given while the test runs (a spy on the parser)."""
    sizes: list[int] = []
    real = orjson.loads

    def spy(data):
        sizes.append(len(data))
        return real(data)

    monkeypatch.setattr(orjson, "loads", spy)
    return sizes
