"""Before a model is READY: Triton's `model_warmup`, and a measurement of which batch sizes pay off.

Batching is not free on a CPU: on 2 cores a batch of 8 EfficientNet-Lite0 images took longer
per image than one image alone. When `dynamic_batching` names no `preferred_batch_size`, the
batcher caps batches at the size that measured the highest throughput on this machine, so
turning batching on never costs throughput. A `preferred_batch_size` in the config is taken as
the operator's choice and is not second-guessed.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.errors import invalid

log = logging.getLogger("triserve")

CALIBRATION_RUNS = 3  # per batch size; the fastest run counts (noise only ever adds time)
CALIBRATION_TOLERANCE = 1.03  # a larger batch must beat batch 1 by more than the noise


def warmup_inputs(warmup: mc.ModelWarmup, model_dir: Path, batched: bool) -> dict[str, np.ndarray]:
    inputs = {}
    rng = np.random.default_rng(0)
    for name, spec in warmup.inputs.items():
        shape = ([max(warmup.batch_size, 1)] if batched else []) + list(spec.dims)
        dtype = datatypes.numpy_of_config(spec.data_type)
        kind = spec.WhichOneof("input_data_type")
        if kind == "input_data_file":
            path = model_dir / "warmup" / spec.input_data_file
            if not path.is_file():
                raise invalid(f"warmup '{warmup.name}': input data file {path} not found")
            one = np.fromfile(path, dtype=dtype).reshape(list(spec.dims))
            array = np.broadcast_to(one, shape).copy()
        elif kind == "random_data" and dtype.kind in "fiub":
            array = (rng.random(shape) * 255).astype(dtype) if dtype.kind != "b" else rng.random(shape) > 0.5
        elif dtype == np.object_:
            array = np.full(shape, b"", dtype=np.object_)
        else:
            array = np.zeros(shape, dtype=dtype)
        inputs[name] = array
    return inputs


def run_warmup(config: mc.ModelConfig, model_dir: Path, instances: list[Any]) -> None:
    outputs = [o.name for o in config.output]
    for warmup in config.model_warmup:
        inputs = warmup_inputs(warmup, model_dir, config.max_batch_size > 0)
        for instance in instances:
            for _ in range(max(warmup.count, 1)):
                instance.run(inputs, outputs)
        log.info("model '%s': warmup '%s' ran on %d instance(s)", config.name, warmup.name, len(instances))


def best_batch_size(config: mc.ModelConfig, instances: list[Any]) -> int:
    """The batch size with the highest measured throughput (ties go to the smaller).

    All instances run at once while it measures: batching only matters under load, and a
    batch that pays off on an idle machine can lose once every core is busy.
    """
    limit = config.max_batch_size
    if limit <= 1 or any(-1 in t.dims or t.data_type == mc.TYPE_STRING for t in config.input):
        return limit
    outputs = [o.name for o in config.output]
    sizes = sorted({1, *[s for s in (2, 4, 8, 16, 32) if s < limit], limit})
    per_image = {}
    with ThreadPoolExecutor(len(instances)) as pool:
        for size in sizes:
            inputs = {t.name: np.zeros([size, *t.dims], datatypes.numpy_of_config(t.data_type)) for t in config.input}

            def run_all() -> float:
                start = time.perf_counter()
                list(pool.map(lambda instance: instance.run(inputs, outputs), instances))
                return time.perf_counter() - start

            run_all()  # the first run of a shape can be slow
            per_image[size] = min(run_all() for _ in range(CALIBRATION_RUNS)) / (size * len(instances))
    chosen = 1
    for size in sizes[1:]:
        if per_image[size] * CALIBRATION_TOLERANCE < per_image[chosen]:
            chosen = size
    log.info(
        "model '%s': dynamic batcher caps batches at %d (ms per image with %d instance(s) busy, by batch size: %s)",
        config.name, chosen, len(instances), ", ".join(f"{s}: {t * 1000:.2f}" for s, t in per_image.items()),
    )
    return chosen
