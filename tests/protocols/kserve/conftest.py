"""One data plane over the tiny repository per test module (loading and closing it is most of
a test's time); tests that change models or need exact counts make their own."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from tests.inprocess import tiny_repository, triton_dataplane
from triserve.core.dataplane import DataPlane


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so module-scoped async fixtures share the tests' event loop."""
    return "asyncio"


@pytest.fixture(scope="module")
async def dataplane(tmp_path_factory) -> AsyncIterator[DataPlane]:
    async with triton_dataplane(tiny_repository(tmp_path_factory.mktemp("models"))) as plane:
        yield plane
