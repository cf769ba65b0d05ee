"""Triton's classification extension: top-k classes of an output as `"%f:index[:label]"` BYTES."""

from __future__ import annotations

import numpy as np

from triserve.errors import invalid
from triserve.vision.topk import label, top_indices


def classify(values: np.ndarray, k: int, labels: list[str], batched: bool, output: str) -> np.ndarray:
    """Per batch element (or for the whole tensor when not batched), the k largest values."""
    if values.dtype.kind not in "iuf" or values.dtype == np.float16:
        raise invalid(f"class result not available for output '{output}' due to unsupported type")
    rows = values.reshape(values.shape[0], -1) if batched and values.ndim > 0 else values.reshape(1, -1)
    count = min(k, rows.shape[1])
    result = np.empty((rows.shape[0], count), dtype=np.object_)
    for r, (row, top) in enumerate(zip(rows, top_indices(rows, count))):
        for c, index in enumerate(top):
            text = f"{float(row[index]):f}:{index}"
            name = label(labels, int(index))
            if name is not None:
                text += ":" + name
            result[r, c] = text.encode()
    return result if batched else result[0]
