"""The k best classes of a score row, and their labels: shared by Triton's classification
extension, TorchServe's image_classifier and anything else that answers top-k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Labels = Sequence[str] | Mapping[str, str]  # by position (labels.txt) or by the index as text (index_to_name.json)


def top_indices(rows: np.ndarray, k: int) -> np.ndarray:
    """Per row of a 2-D array, the indices of its k largest values, largest first; equal values
    keep their index order. Fewer than k when a row is shorter."""
    # float64 first: negating unsigned or minimal integers would wrap around
    return np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]


def label(labels: Labels | None, index: int) -> str | None:
    """The label of class `index`, or None when there is none for it."""
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        return labels.get(str(index))
    return labels[index] if 0 <= index < len(labels) else None
