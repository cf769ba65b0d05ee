"""TorchServe custom-handler backend (`platform: "torchserve_handler"`): Python code from an archive.

The core loads it only when the operator allowed archive code (`triserve serve
--allow-custom-handlers`); otherwise loading fails with a reason saying so.
The model file is the archive's `MAR-INF/MANIFEST.json`; its folder's parent is the
extracted archive (the handler's `model_dir`). See processors/custom.py for the semantics.

A handler that computes with torch gets the threads a TorchScript model would (its instance's
share of the cores, every core when its execution runs alone), on the threads the TorchScript
backend keeps for that count, and it initialises on a thread of its own that ends with it: torch
computes on OpenMP, whose worker teams belong to the thread that started them (see
backends/pytorch_libtorch.py).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve.backends import EXECUTION, InstanceSettings
from triserve.errors import invalid
from triserve.core.processors.custom import INPUT, OUTPUTS, CustomHandler

BACKEND = "torchserve_handler"
DEFAULT_FILENAME = "MAR-INF/MANIFEST.json"

def autocomplete(config: mc.ModelConfig, model_file: Path) -> None:
    if not config.input:
        config.input.add(name=INPUT, data_type=mc.TYPE_STRING, dims=[1])
    if not config.output:
        for name in OUTPUTS:
            config.output.add(name=name, data_type=mc.TYPE_STRING, dims=[1])


class HandlerModel:
    def __init__(self, config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> None:
        if not model_file.is_file():
            raise invalid(f"{model_file} not found")
        manifest = json.loads(model_file.read_text(encoding="utf-8"))
        gpu = int(settings.device.partition(":")[2] or 0) if settings.device.startswith("cuda") else None
        self.batched = config.max_batch_size > 0
        cpu = gpu is None
        self.threads = settings.threads if cpu else 1
        self.wide_threads = settings.wide_threads if cpu and settings.wide_threads > settings.threads else 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="handler-init") as thread:
            self.handler = thread.submit(CustomHandler, model_file.parent.parent, manifest, config.name,
                                         max(config.max_batch_size, 1), gpu).result()

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        if "torch" not in sys.modules:
            return self._run(inputs, outputs)
        from triserve.backends.pytorch_libtorch import call_with_threads

        threads = self.wide_threads if self.wide_threads and EXECUTION.alone else self.threads
        return call_with_threads(threads, self._run, inputs, outputs)

    def _run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        body = inputs[INPUT]
        rows = [item if isinstance(item, dict) else {"body": item} for item in body.reshape(-1)]
        replies = self.handler.handle(rows)
        shape = (len(rows), 1) if self.batched else (1,)
        response = np.empty(len(rows), dtype=np.object_)
        content_type = np.empty(len(rows), dtype=np.object_)
        for i, reply in enumerate(replies):
            response[i] = reply.value
            content_type[i] = reply.content_type.encode()
        result = {OUTPUTS[0]: response.reshape(shape), OUTPUTS[1]: content_type.reshape(shape)}
        return {name: result[name] for name in outputs}

    def close(self) -> None:
        self.handler = None  # type: ignore[assignment]


def load(config: mc.ModelConfig, model_file: Path, settings: InstanceSettings) -> HandlerModel:
    return HandlerModel(config, model_file, settings)
