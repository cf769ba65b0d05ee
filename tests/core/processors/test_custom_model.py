"""A custom handler's torch work: on the instance's share of the cores, on the threads the
TorchScript backend keeps for that count, as a TorchScript model's would be."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as mc

from triserve.backends import EXECUTION, InstanceSettings
from triserve.core.processors import custom_model

# Answers, per row, the thread its handle() ran on and torch's intra-op thread count there;
# initialize() records the thread it ran on.
HANDLER = '''
import threading
import torch

INITIALIZED_ON = []

def handle(data, context):
    if data is None:
        INITIALIZED_ON.append(threading.current_thread().name)
        return None
    return [f"{threading.current_thread().name} {torch.get_num_threads()}" for _ in data]
'''


def _handler_model(tmp_path: Path, settings: InstanceSettings) -> custom_model.HandlerModel:
    (tmp_path / "MAR-INF").mkdir()
    manifest = {"model": {"modelName": "where", "handler": "where.py"}, "runtime": "python"}
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    (tmp_path / "where.py").write_text(HANDLER)
    config = mc.ModelConfig(name="where", max_batch_size=1)
    custom_model.autocomplete(config, tmp_path / "MAR-INF" / "MANIFEST.json")
    return custom_model.load(config, tmp_path / "MAR-INF" / "MANIFEST.json", settings)


def _where(model: custom_model.HandlerModel, alone: bool = False) -> tuple[str, int]:
    """One execution as the scheduler makes it: on an execution thread, alone or not."""
    answers = []

    def execute() -> None:
        EXECUTION.alone = alone
        body = np.array([[b"row"]], dtype=np.object_)
        answers.append(model.run({"body": body}, ["response"])["response"][0, 0])

    thread = threading.Thread(target=execute, name="execution")
    thread.start()
    thread.join()
    name, count = answers[0].decode().rsplit(" ", 1)
    return name, int(count)


def test_a_single_threaded_instance_computes_on_the_execution_thread_on_one_thread(tmp_path):
    torch.set_num_threads(2)  # torch's default for threads without a count of their own
    try:
        model = _handler_model(tmp_path, InstanceSettings(threads=1))
        assert _where(model) == ("execution", 1)
    finally:
        torch.set_num_threads(1)


def test_an_instance_with_two_threads_computes_on_the_threads_kept_for_two(tmp_path):
    name, count = _where(_handler_model(tmp_path, InstanceSettings(threads=2)))
    assert name.startswith("torch-2-threads") and count == 2


def test_an_execution_that_runs_alone_uses_every_core(tmp_path):
    model = _handler_model(tmp_path, InstanceSettings(threads=1, wide_threads=4))
    name, count = _where(model, alone=True)
    assert name.startswith("torch-4-threads") and count == 4
    assert _where(model, alone=False) == ("execution", 1)


def test_the_handler_initialises_on_a_thread_that_ends_with_it(tmp_path):
    model = _handler_model(tmp_path, InstanceSettings(threads=1))
    (name,) = model.handler._handle.__globals__["INITIALIZED_ON"]
    assert name.startswith("handler-init")
    assert name not in {t.name for t in threading.enumerate()}
