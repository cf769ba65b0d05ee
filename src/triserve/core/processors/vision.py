"""TorchServe's built-in `object_detector` and `image_segmenter`, without torchvision.

- `object_detector` (ts/torch_handler/object_detector.py): the image as ToTensor makes it
  (RGB, /255, CHW, its own size) is the model's one input; the TorchScript model answers
  `boxes` [N, 4] (x1, y1, x2, y2), `labels` [N] and `scores` [N] (a tuple, in that order: the
  outputs `boxes__0`, `labels__1`, `scores__2`). Detections scoring at least 0.5 are answered as
  TorchServe answers them, one list per image of `{"<label>": [x1, y1, x2, y2], "score": s}`,
  labels from `index_to_name.json` (the class index as text without one). One image per request:
  images of different sizes cannot share a batch. torchvision's own scripted detection models
  return a list of dicts, which the TorchScript backend does not take: such a model fails to load.
- `image_segmenter` (ts/torch_handler/image_segmenter.py): ImageNet preprocessing (Resize 256,
  CenterCrop 224, ToTensor, Normalize), the model's first output is the `out` scores
  [N, K, H, W]; per image the answer is TorchServe's [H][W][2] list: per pixel the best class
  (as a float) and its softmax probability.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from triserve.core.processors import Row, main_field
from triserve.errors import invalid
from triserve.vision.images import decode, imagenet_preprocess
from triserve.vision.topk import label

THRESHOLD = 0.5  # TorchServe's ObjectDetector.threshold


def _image_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise invalid(f"a text image field must be base64: {e}") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise invalid("the request is not an image")


def to_tensor(data: bytes) -> np.ndarray:
    """torchvision's ToTensor of the decoded RGB image: float32 [3, H, W] in [0, 1]."""
    pixels = np.asarray(decode(data), dtype=np.float32) / np.float32(255)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class ObjectDetector:
    def __init__(self, mapping: dict[str, str] | None, threshold: float = THRESHOLD) -> None:
        self.mapping = mapping
        self.threshold = threshold

    def preprocess(self, model: Any, rows: list[Row]) -> dict[str, np.ndarray]:
        if len(rows) != 1:
            raise invalid("object_detector takes one image per request")
        image = to_tensor(_image_bytes(main_field(rows[0])))
        return {model.config.input[0].name: image[None] if model.max_batch_size > 0 else image}

    def postprocess(self, model: Any, outputs: dict[str, np.ndarray]) -> list[list[dict[str, Any]]]:
        boxes, labels, scores = (np.asarray(outputs[name]) for name in model.output_names[:3])
        if model.max_batch_size > 0:
            boxes, labels, scores = boxes[0], labels[0], scores[0]
        boxes = boxes.reshape(-1, 4)
        keep = scores.reshape(-1) >= self.threshold
        answer = []
        for box, cls, score in zip(boxes[keep].tolist(), labels.reshape(-1)[keep].tolist(), scores.reshape(-1)[keep].tolist()):
            name = label(self.mapping, int(cls))
            answer.append({str(int(cls)) if name is None else name: box, "score": score})
        return [answer]


class ImageSegmenter:
    def preprocess(self, model: Any, rows: list[Row]) -> dict[str, np.ndarray]:
        images = [imagenet_preprocess(decode(_image_bytes(main_field(row)))) for row in rows]
        batch = np.stack(images) if model.max_batch_size > 0 else images[0]
        return {model.config.input[0].name: batch}

    def postprocess(self, model: Any, outputs: dict[str, np.ndarray]) -> list[Any]:
        scores = np.asarray(outputs[model.output_names[0]])
        if model.max_batch_size == 0:
            scores = scores[None]
        if scores.ndim != 4:
            raise invalid(f"image_segmenter: the model's output must be [N, K, H, W] scores, got shape {list(scores.shape)}")
        probs = softmax(scores, axis=1)
        best = probs.argmax(axis=1)
        values = np.take_along_axis(probs, best[:, None], axis=1)[:, 0]
        return [np.stack([b.astype(v.dtype), v], axis=-1).tolist() for b, v in zip(best, values)]
