"""Work that grows with what a client sent (parsing tensor contents and large messages) runs on
a worker thread once it is large, so that the event loop keeps answering other clients."""

from __future__ import annotations

import asyncio
import functools
from typing import Callable, TypeVar

T = TypeVar("T")

# Below this much work (bytes, or tensor elements) a thread hop costs more than the work itself.
OFF_LOOP_SIZE = 1 << 16


async def run(size: int, work: Callable[..., T], *args: object) -> T:
    """`work(*args)`, here when `size` is small, else on a worker thread."""
    if size <= OFF_LOOP_SIZE:
        return work(*args)
    return await off_loop(work, *args)


async def off_loop(work: Callable[..., T], *args: object) -> T:
    """`work(*args)` on the default executor's threads, for work whose size is not known."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(work, *args))
