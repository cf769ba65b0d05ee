"""TorchServe handlers: what turns request fields into model tensors and model tensors into answers.

A handler works on *rows*: one dict per request (or per file of a multi-file request) mapping
field names (`data`, `body`, form fields) to bytes, text or decoded JSON, as TorchServe's
handlers see them. `preprocess` runs on a worker thread (image decoding releases the GIL),
the model runs in the core like any other, `postprocess` gives one answer per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from triserve.errors import Code, ServerError, invalid

Row = dict[str, Any]

# Built-in handler names torch-model-archiver does not copy into the archive.
NATIVE = ("image_classifier", "base_handler")
NOT_SUPPORTED = ("object_detector", "image_segmenter", "text_classifier", "dali_image_classifier",
                 "vllm_handler", "trt_llm_handler")


class Handler(Protocol):
    def preprocess(self, model: Any, rows: list[Row]) -> dict[str, np.ndarray]: ...

    def postprocess(self, model: Any, outputs: dict[str, np.ndarray]) -> list[Any]: ...


@dataclass
class Reply:
    """One row's answer: a JSON-able value, text or bytes, and what the handler said about it."""

    value: Any
    content_type: str = ""


class StatusError(ServerError):
    """An error with an explicit HTTP status (TorchServe's PredictionException and friends)."""

    def __init__(self, message: str, status: int, kind: str = "InternalServerException") -> None:
        codes = {404: Code.NOT_FOUND, 409: Code.ALREADY_EXISTS, 503: Code.UNAVAILABLE}
        super().__init__(message, codes.get(status, Code.INVALID_ARG if 400 <= status < 500 else Code.INTERNAL))
        self.status = status
        self.kind = kind


def main_field(row: Row) -> Any:
    """TorchServe's `row.get("data") or row.get("body")`."""
    value = row.get("data") or row.get("body")
    if value is None:
        raise invalid(f"the request has no 'data' or 'body' field (fields: {sorted(row) or 'none'})")
    return value


def native(name: str, model_dir: Path) -> Handler:
    """The built-in handler `name` for an archive extracted to `model_dir`."""
    if name == "image_classifier":
        from triserve.handlers.image_classifier import ImageClassifier, load_label_mapping

        return ImageClassifier(load_label_mapping(model_dir / "index_to_name.json"))
    if name == "base_handler":
        from triserve.handlers.tensor_json import TensorJSON

        return TensorJSON(plain=True)
    raise invalid(f"built-in handler '{name}' is not supported; supported: {', '.join(NATIVE)}")
