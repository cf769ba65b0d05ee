"""Predictions the TorchServe way: rows -> handler preprocess (on a thread) -> core model -> answers.

Archive models use their archive's handler; any other model (a Triton repository's) takes and
answers JSON tensors. Rows beyond the model's batch size are split into several core requests,
which the core's dynamic batcher may join with other clients' requests.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from triserve.core.manager import ModelManager
from triserve.core.model import Model
from triserve.core.types import InferRequest
from triserve.errors import not_found
from triserve.handlers import Handler, Reply, Row, StatusError
from triserve.handlers.tensor_json import TensorJSON
from triserve.repository.mar import MarCatalog

_TENSORS = TensorJSON()


def mar_catalog(manager: ModelManager) -> MarCatalog | None:
    return next((c for c in manager.catalogs if isinstance(c, MarCatalog)), None)


def no_worker(name: str, reason: str = "") -> StatusError:
    return StatusError(
        f'Model "{name}" has no worker to serve inference request. Please use scale workers API to add workers.'
        + (f" ({reason})" if reason else ""),
        503,
        "ServiceUnavailableException",
    )


def resolve(manager: ModelManager, name: str, version: str | None) -> tuple[Model, Handler, str]:
    """(model, handler, TorchServe version string) for `/predictions/{name}[/{version}]`."""
    catalog = mar_catalog(manager)
    if catalog is not None and name in catalog:
        number = catalog.resolve(name, version)
        entry = manager.entries.get(name)
        if entry is None or number not in entry.versions:
            raise no_worker(name, entry.reason if entry is not None else "")
        return entry.versions[number], catalog.handler(name, number), catalog.registrations(name)[number].version
    entry = manager.entries.get(name)
    if entry is None:
        raise not_found(f"Model not found: {name}")
    if not entry.versions:
        raise no_worker(name)
    model = manager.get(name, version or "")
    return model, _TENSORS, model.version_str


async def _run(model: Model, handler: Handler, rows: list[Row]) -> list[Any]:
    loop = asyncio.get_running_loop()
    inputs = await loop.run_in_executor(None, functools.partial(handler.preprocess, model, rows))
    response = await model.infer(InferRequest(inputs))
    return handler.postprocess(model, response.outputs)


async def predict(model: Model, handler: Handler, rows: list[Row]) -> list[Reply]:
    """One answer per row, in order."""
    size = model.max_batch_size or 1
    if len(rows) <= size:
        answers = await _run(model, handler, rows)
    else:
        parts = await asyncio.gather(*(_run(model, handler, rows[i : i + size]) for i in range(0, len(rows), size)))
        answers = [a for part in parts for a in part]
    return [a if isinstance(a, Reply) else Reply(a) for a in answers]
