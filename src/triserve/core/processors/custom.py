"""Custom handler code from an archive (only with --allow-custom-handlers), run as TorchServe runs it.

Loading follows ts/model_loader.py: `"handler": "x:fn"` is function `fn` of module `x`
(initialised with `fn(None, context)`); a bare `x` or `x.py` is its `handle` function if it has
one, else its only class (`initialize(context)`, `handle(data, context)`). Built-in names used
with a `modelFile` (eager mode) come from triserve's `ts` stand-ins. Answers follow
ts/service.py: a list with one element per row, bytes sent raw, text as UTF-8, anything else as
indented JSON; PredictionException sets the status; other failures are 503 "Prediction failed".

Through the core, such a model has one BYTES input `body` (one element per row: the row's
fields as a dict from the TorchServe front end, raw bytes from v2 clients) and BYTES outputs
`response` and `content_type`.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from triserve.core.processors import NATIVE, Reply, Row, ts_shim
from triserve.errors import StatusError, invalid

log = logging.getLogger("triserve")

INPUT = "body"
OUTPUTS = ("response", "content_type")
_import_lock = threading.Lock()  # sys.path is process-wide while a handler imports


def handler_file(handler: str) -> str | None:
    """The archive file holding a custom handler ("x:fn" -> "x.py"); None for built-in names."""
    module = handler.split(":", 1)[0]
    if module in NATIVE:
        return None
    return module if module.endswith(".py") else module + ".py"


def _import(model_dir: Path, filename: str, model_name: str) -> Any:
    path = model_dir / filename
    if not path.is_file():
        raise invalid(f"handler file {filename} is not in the archive")
    spec = importlib.util.spec_from_file_location(f"triserve_handler_{model_name}_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise invalid(f"handler file {filename} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    with _import_lock:
        sys.path.insert(0, str(model_dir))  # handlers import their sibling files, as in TorchServe
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(model_dir))
    return module


def _entry_point(module: Any, function: str | None) -> tuple[Callable, Callable]:
    """(handle(data, context), initialize(context)) as ts/model_loader.py finds them."""
    function = function or "handle"
    if hasattr(module, function):
        entry = getattr(module, function)
        return entry, lambda context: entry(None, context)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    if len(classes) != 1:
        names = [c.__name__ for c in classes]  # names, not class reprs
        raise invalid(f"Expected only one class in custom service code or a function entry point {names}")
    service = classes[0]()
    if not hasattr(service, "handle"):
        raise invalid(f"Expect handle method in class {classes[0].__name__}")
    return service.handle, getattr(service, "initialize", lambda context: None)


class CustomHandler:
    """One worker's handler object (one per model instance)."""

    def __init__(self, model_dir: Path, manifest: dict, model_name: str, batch_size: int, gpu: int | None) -> None:
        ts_shim.install()
        handler = str(manifest["model"].get("handler", ""))
        module_name, _, function = handler.partition(":")
        filename = handler_file(handler)
        if filename is None:
            builtin = {"image_classifier": ts_shim.ImageClassifier, "base_handler": ts_shim.BaseHandler}[module_name]
            service = builtin()
            self._handle, initialize = service.handle, service.initialize
        else:
            module = _import(model_dir, filename, model_name)
            self._handle, initialize = _entry_point(module, function or None)
        self.context = ts_shim.Context(model_name, str(model_dir), manifest, batch_size, gpu, "triserve")
        with _import_lock:
            sys.path.insert(0, str(model_dir))
            try:
                initialize(self.context)
            finally:
                sys.path.remove(str(model_dir))

    def handle(self, rows: list[Row]) -> list[Reply]:
        self.context.start_batch(len(rows))
        try:
            results = self._handle(rows, self.context)
        except ts_shim.PredictionException as e:
            raise StatusError(e.message, e.error_code) from None
        except MemoryError:
            raise StatusError("Out of resources", 507) from None
        except Exception as e:
            log.exception("custom handler of model '%s' failed", self.context.model_name)
            if "CUDA" in str(e):
                raise StatusError("Out of resources", 507) from None
            raise StatusError("Prediction failed", 503, "ServiceUnavailableException") from None
        if not isinstance(results, list):
            raise StatusError("Invalid model predict output", 503, "ServiceUnavailableException")
        if len(results) != len(rows):
            raise StatusError("number of batch response mismatched", 503, "ServiceUnavailableException")
        return [Reply(_encode(value), self.context.get_response_content_type(i) or "") for i, value in enumerate(results)]


def _encode(value: Any) -> bytes:
    """ts/protocol/otf_message_handler.py create_predict_response, per element."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if type(value).__module__.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor):
            buffer = io.BytesIO()
            torch.save(value, buffer)
            return buffer.getvalue()
    try:
        return json.dumps(value, indent=2).encode("utf-8")
    except (TypeError, ValueError):
        raise StatusError("Unsupported model output data type.", 503, "ServiceUnavailableException") from None


class RowsHandler:
    """The service side of a custom-handler model: rows in as they are, encoded answers out."""

    def preprocess(self, model: Any, rows: list[Row]) -> dict[str, np.ndarray]:
        body = np.empty((len(rows), 1), dtype=np.object_)
        for i, row in enumerate(rows):
            body[i, 0] = row
        return {INPUT: body if model.max_batch_size > 0 else body[0]}

    def postprocess(self, model: Any, outputs: dict[str, np.ndarray]) -> list[Reply]:
        responses = outputs[OUTPUTS[0]].reshape(-1)
        types = outputs[OUTPUTS[1]].reshape(-1)
        return [Reply(r, t.decode() if isinstance(t, bytes) else "") for r, t in zip(responses, types)]
