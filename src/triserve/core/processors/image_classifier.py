"""TorchServe's built-in `image_classifier`: ImageNet preprocessing in, softmax top 5 out.

Same transform as TorchServe (Resize 256, CenterCrop 224, ToTensor, ImageNet mean/std), but
images are converted to RGB first, so PNGs with alpha, greyscale and CMYK images work too
(TorchServe fails on them). Output per image: `{label: probability}` for the 5 best classes,
in descending order; labels from `index_to_name.json` (a list value means its last element).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from triserve.errors import invalid
from triserve.core.processors import Row, main_field
from triserve.vision.images import imagenet_image
from triserve.vision.topk import label, top_indices

log = logging.getLogger("triserve")

TOPK = 5


def load_label_mapping(path: Path) -> dict[str, str] | None:
    """TorchServe's `load_label_mapping`: None (numeric labels) when the file is missing."""
    if not path.is_file():
        log.warning("%s not found: classes are answered by index", path.name)
        return None
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"{path.name} is not valid JSON: {e}") from None
    if not isinstance(mapping, dict):
        raise invalid(f"{path.name} must be a JSON object of index -> name")
    if "object_type_names" in mapping:
        names = mapping["object_type_names"]
        if not isinstance(names, list):
            raise invalid(f"{path.name}: 'object_type_names' must be a list")
        mapping = {str(i): name for i, name in enumerate(names)}
    result = {}
    for key, value in mapping.items():
        if isinstance(value, list) and value:
            value = value[-1]
        if not isinstance(value, str):
            raise invalid(f"{path.name}: labels in index->name mapping must be either str or List[str]")
        result[str(key)] = value
    return result


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class ImageClassifier:
    def __init__(self, mapping: dict[str, str] | None, topk: int = TOPK) -> None:
        self.mapping = mapping
        self.topk = topk

    def _image(self, value: Any) -> np.ndarray:
        if isinstance(value, str):
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as e:
                raise invalid(f"a text image field must be base64: {e}") from None
        if isinstance(value, (bytes, bytearray, memoryview)):
            return imagenet_image(bytes(value))  # a large JPEG is decoded reduced (vision.images.DRAFT_MARGIN)
        # A JSON tensor: used as the model input as it is, as TorchServe does.
        try:
            return np.asarray(value, dtype=np.float32)
        except (ValueError, TypeError) as e:
            raise invalid(f"the request is neither an image nor a numeric tensor: {e}") from None

    def preprocess(self, model: Any, rows: list[Row]) -> dict[str, np.ndarray]:
        name = model.config.input[0].name
        images = [self._image(main_field(row)) for row in rows]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise invalid(f"the tensors of one request have different shapes: {sorted(shapes)}")
        batch = np.stack(images) if model.max_batch_size > 0 else images[0]
        return {name: batch}

    def postprocess(self, model: Any, outputs: dict[str, np.ndarray]) -> list[dict[str, float]]:
        scores = outputs[model.output_names[0]]
        if model.max_batch_size == 0:
            scores = scores[None]
        probs = softmax(scores.reshape(scores.shape[0], -1))
        answers = []
        for row, classes in zip(probs, top_indices(probs, self.topk)):
            values = row[classes].tolist()
            labels = [self.label(int(c)) for c in classes]
            answers.append(dict(zip(labels, values)))
        return answers

    def label(self, index: int) -> str:
        name = label(self.mapping, index)
        return str(index) if name is None else name
