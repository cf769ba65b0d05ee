"""Model processors (TorchServe handlers): what turns request fields into model tensors and
model tensors into answers. The core builds a model version's processor when it loads.

A handler works on *rows*: one dict per request (or per file of a multi-file request) mapping
field names (`data`, `body`, form fields) to bytes, text or decoded JSON, as TorchServe's
handlers see them. `preprocess` runs on a worker thread (image decoding releases the GIL),
the model runs in the core like any other, `postprocess` gives one answer per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from triserve.core.spec import ProcessorSpec
from triserve.errors import invalid

Row = dict[str, Any]

# Built-in handler names torch-model-archiver does not copy into the archive.
NATIVE = ("image_classifier", "base_handler", "object_detector", "image_segmenter", "text_classifier")
NOT_SUPPORTED = ("dali_image_classifier", "vllm_handler", "trt_llm_handler")
CUSTOM = "custom"  # the handler of an archive whose own Python code runs (processors/custom.py)
# The platform of models whose instances are archive handler code rather than a framework model.
CUSTOM_PLATFORM = "torchserve_handler"


class Processor(Protocol):
    def preprocess(self, model: Any, rows: list[Row]) -> dict[str, np.ndarray]: ...

    def postprocess(self, model: Any, outputs: dict[str, np.ndarray]) -> list[Any]: ...


@dataclass
class Reply:
    """One row's answer: a JSON-able value, text or bytes, and what the handler said about it."""

    value: Any
    content_type: str = ""


def main_field(row: Row) -> Any:
    """TorchServe's `row.get("data") or row.get("body")`."""
    value = row.get("data") or row.get("body")
    if value is None:
        raise invalid(f"the request has no 'data' or 'body' field (fields: {sorted(row) or 'none'})")
    return value


def build(spec: ProcessorSpec) -> Processor:
    """The processor a spec names, for files in `spec.folder`."""
    if spec.handler == "image_classifier":
        from triserve.core.processors.image_classifier import ImageClassifier, load_label_mapping

        return ImageClassifier(load_label_mapping(spec.folder / "index_to_name.json"))
    if spec.handler == "object_detector":
        from triserve.core.processors.image_classifier import load_label_mapping
        from triserve.core.processors.vision import ObjectDetector

        return ObjectDetector(load_label_mapping(spec.folder / "index_to_name.json"))
    if spec.handler == "image_segmenter":
        from triserve.core.processors.vision import ImageSegmenter

        return ImageSegmenter()
    if spec.handler == "text_classifier":
        from triserve.core.processors.image_classifier import load_label_mapping
        from triserve.core.processors.text_classifier import VOCAB_FILE, TextClassifier, load_vocabulary

        vocab = _manifest_model(spec.folder).get("sourceVocab") or VOCAB_FILE
        if not isinstance(vocab, str) or "/" in vocab or "\\" in vocab or vocab in (".", ".."):
            raise invalid("text_classifier: the manifest's sourceVocab must be a file name in the archive")
        return TextClassifier(load_vocabulary(spec.folder / vocab), load_label_mapping(spec.folder / "index_to_name.json"))
    if spec.handler == "base_handler":
        from triserve.core.processors.tensor_json import TensorJSON

        return TensorJSON(plain=True)
    if spec.handler == CUSTOM:
        from triserve.core.processors.custom import RowsHandler

        return RowsHandler()
    raise invalid(f"built-in handler '{spec.handler}' is not supported; supported: {', '.join(NATIVE)}")


def _manifest_model(folder: Any) -> dict:
    import json

    try:
        manifest = json.loads((folder / "MAR-INF" / "MANIFEST.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    model = manifest.get("model") if isinstance(manifest, dict) else None
    return model if isinstance(model, dict) else {}


def tensors() -> Processor:
    """The processor of models that have none: JSON tensors in, JSON tensors out."""
    from triserve.core.processors.tensor_json import TensorJSON

    return TensorJSON()


def custom_backend(allowed: bool, model_name: str) -> ModuleType:
    """The backend-like module that runs archive handler code, when the operator allowed it."""
    from triserve.core.processors import custom_model as module

    if not allowed:
        raise invalid(
            f"model '{model_name}' runs Python handler code from its archive; triserve executes"
            " archive code only when the server is started with --allow-custom-handlers (or --allow-model-code)"
        )
    return module
