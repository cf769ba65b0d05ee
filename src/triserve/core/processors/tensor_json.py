"""Tensors as JSON through `/predictions`: for Triton-repository models and `base_handler` archives.

Each row is one instance (without the batch dimension when the model batches): a JSON object
`{"input name": nested list, ...}`, or a bare nested list for a one-input model. The answer per
row is `{"output name": nested list, ...}`; with `plain` (TorchServe's base_handler, whose
postprocess is `tensor.tolist()`), a one-output model answers the bare nested list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.errors import invalid
from triserve.core.processors import Row, main_field


_KINDS = {int: "a number", float: "a number", bool: "a boolean", dict: "an object", list: "a list", type(None): "null"}


def _array(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    try:
        if dtype == np.object_:
            array = np.asarray(value, dtype=np.object_)
            flat = array.reshape(-1)
            for i, item in enumerate(flat):
                if not isinstance(item, str):
                    raise TypeError(f"BYTES elements must be strings, got {_KINDS.get(type(item), 'another value')}")
                flat[i] = item.encode()
            return array
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise invalid(f"input '{name}': not a valid {datatypes.from_numpy(dtype)} tensor: {e}") from None


def _json(array: np.ndarray) -> Any:
    if array.dtype == np.object_:
        return np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b),
                            otypes=[object])(array).tolist()
    return array.tolist()


class TensorJSON:
    def __init__(self, plain: bool = False) -> None:
        self.plain = plain

    def _instance(self, model: Any, row: Row) -> dict[str, np.ndarray]:
        value = main_field(row)
        inputs = model.config.input
        if isinstance(value, (bytes, bytearray, str)):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as e:
                # A model taking one BYTES tensor gets a body that is not JSON as it is (an image file)
                if len(inputs) == 1 and inputs[0].data_type == mc.TYPE_STRING and list(inputs[0].dims) in ([1], [-1]):
                    raw = value.encode() if isinstance(value, str) else bytes(value)
                    return {inputs[0].name: np.array([raw], dtype=np.object_)}
                raise invalid(f"the request body must be JSON tensors: {e}") from None
        if not isinstance(value, dict):
            if len(inputs) != 1:
                raise invalid(
                    f"model '{model.name}' has {len(inputs)} inputs: send a JSON object"
                    f" {{{', '.join(repr(t.name) for t in inputs)}}} of nested lists"
                )
            value = {inputs[0].name: value}
        unknown = sorted(value.keys() - model.inputs.keys())
        if unknown:
            raise invalid(f"unexpected input '{unknown[0]}' for model '{model.name}'; it has {sorted(model.inputs)}")
        return {
            t.name: _array(t.name, value[t.name], datatypes.numpy_of_config(t.data_type)) for t in inputs if t.name in value
        }

    def preprocess(self, model: Any, rows: list[Row]) -> dict[str, np.ndarray]:
        instances = [self._instance(model, row) for row in rows]
        if model.max_batch_size == 0:
            return instances[0]
        batch = {}
        for name in instances[0]:
            parts = [i.get(name) for i in instances]
            if any(p is None for p in parts) or len({p.shape for p in parts}) > 1:
                raise invalid(f"input '{name}' is missing or has different shapes across the request's instances")
            batch[name] = np.stack(parts)
        return batch

    def postprocess(self, model: Any, outputs: dict[str, np.ndarray]) -> list[Any]:
        first = next(iter(outputs.values()))
        count = first.shape[0] if model.max_batch_size > 0 else 1
        answers = []
        for i in range(count):
            row = {name: _json(value[i] if model.max_batch_size > 0 else value) for name, value in outputs.items()}
            answers.append(next(iter(row.values())) if self.plain and len(row) == 1 else row)
        return answers
