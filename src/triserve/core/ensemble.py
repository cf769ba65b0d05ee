"""Ensembles (`platform: "ensemble"`): a graph of steps, each a request to another loaded model,
wired by tensor names (`ensemble_scheduling { step [ { model_name model_version input_map
output_map } ] }`).

At load, `check()` proves the graph can run with the composing models as they are loaded: every
step's model and tensors exist, datatypes and shapes agree along every edge, each tensor has one
producer, every ensemble output is produced, and no step waits on itself (a cycle). At run time
a step starts as soon as all its inputs exist, so independent steps run in parallel; each step
is an ordinary request to its model (its queue, batching and statistics apply).

The ensemble's own statistics count its requests (success, failure, total time), as Triton's
do; the composing models count theirs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.core.stats import ModelStats
from triserve.core.types import InferRequest, RequestedOutput
from triserve.errors import ServerError, invalid, unavailable

PLATFORM = "ensemble"

# (model name, version or None for the default) -> the ready model (raises ServerError if none)
Lookup = Callable[[str, "int | None"], Any]


def is_ensemble(config: mc.ModelConfig) -> bool:
    return config.platform == PLATFORM


def composing_models(config: mc.ModelConfig) -> list[str]:
    """The models the ensemble's steps call, each once, in step order."""
    names: list[str] = []
    for step in config.ensemble_scheduling.step:
        if step.model_name and step.model_name not in names:
            names.append(step.model_name)
    return names


def _version(step: mc.ModelEnsembling.Step) -> int | None:
    return None if step.model_version < 0 else step.model_version


def _full_dims(dims: list[int], batched: bool) -> list[int]:
    return [-1, *dims] if batched else list(dims)


def check(config: mc.ModelConfig, lookup: Lookup) -> None:
    """Refuse (INVALID_ARG, with the reason) an ensemble whose graph cannot run."""
    name = config.name
    prefix = f"ensemble '{name}'"
    if config.WhichOneof("scheduling_choice") != "ensemble_scheduling" or not config.ensemble_scheduling.step:
        raise invalid(f"{prefix} must have ensemble_scheduling with at least one step")
    if not config.input or not config.output:
        raise invalid(f"{prefix} must declare its inputs and outputs")
    batched = config.max_batch_size > 0
    # tensor -> (datatype, full dims, who makes it)
    produced: dict[str, tuple[int, list[int], str]] = {
        t.name: (t.data_type, _full_dims(list(t.dims), batched), "the ensemble input") for t in config.input
    }
    steps = list(config.ensemble_scheduling.step)
    models = []
    for i, step in enumerate(steps):
        if not step.model_name:
            raise invalid(f"{prefix}: step {i} names no model")
        if step.model_name == name:
            raise invalid(f"{prefix}: step {i} calls the ensemble itself (a cycle)")
        try:
            model = lookup(step.model_name, _version(step))
        except ServerError as e:
            raise invalid(f"{prefix}: step {i} model '{step.model_name}' is not available: {e.message}") from None
        models.append(model)
        if model.config.model_transaction_policy.decoupled:
            raise invalid(f"{prefix}: step {i} model '{step.model_name}' is decoupled (many responses per request);"
                          " triserve's ensembles take models with one response per request")
        if batched and model.max_batch_size < config.max_batch_size:
            raise invalid(
                f"{prefix} has max_batch_size {config.max_batch_size}, but its step {i} model '{step.model_name}'"
                f" has max_batch_size {model.max_batch_size}; composing models must take the ensemble's batches"
            )
        if not batched and model.max_batch_size > 0:
            pass  # a batching model can take an unbatched ensemble's tensors if their shapes carry the batch
        for key in step.output_map:
            if key not in model.outputs:
                raise invalid(f"{prefix}: step {i} maps output '{key}', which model '{step.model_name}' does not have;"
                              f" it has {sorted(model.outputs)}")
        for key in step.input_map:
            if key not in model.inputs:
                raise invalid(f"{prefix}: step {i} maps input '{key}', which model '{step.model_name}' does not have;"
                              f" it has {sorted(model.inputs)}")
        required = {t.name for t in model.config.input if not t.optional}
        missing = sorted(required - set(step.input_map))
        if missing:
            raise invalid(f"{prefix}: step {i} gives model '{step.model_name}' no tensor for its input '{missing[0]}'")
        for key, tensor in step.output_map.items():
            if tensor in produced:
                raise invalid(f"{prefix}: tensor '{tensor}' is produced twice ({produced[tensor][2]} and step {i})")
            spec = model.outputs[key]
            produced[tensor] = (spec.data_type, _full_dims(list(spec.dims), model.max_batch_size > 0),
                                f"step {i} ('{step.model_name}' output '{key}')")
    for i, (step, model) in enumerate(zip(steps, models)):
        for key, tensor in step.input_map.items():
            if tensor not in produced:
                raise invalid(f"{prefix}: step {i} input '{key}' reads tensor '{tensor}', which is neither an"
                              " ensemble input nor any step's output")
            data_type, dims, source = produced[tensor]
            spec = model.inputs[key]
            if spec.data_type != data_type:
                raise invalid(
                    f"{prefix}: tensor '{tensor}' from {source} is {datatypes.name_of_config(data_type)}, but step {i}"
                    f" model '{step.model_name}' input '{key}' expects {datatypes.name_of_config(spec.data_type)}"
                )
            wanted = _full_dims(list(spec.dims), model.max_batch_size > 0)
            if not datatypes.dims_fit(dims, wanted):
                raise invalid(
                    f"{prefix}: tensor '{tensor}' from {source} has shape {dims}, but step {i} model"
                    f" '{step.model_name}' input '{key}' expects {wanted}"
                )
    for t in config.output:
        if t.name not in produced or produced[t.name][2] == "the ensemble input":
            raise invalid(f"{prefix}: no step produces ensemble output '{t.name}'")
        data_type, dims, source = produced[t.name]
        if t.data_type != data_type:
            raise invalid(f"{prefix}: output '{t.name}' is {datatypes.name_of_config(t.data_type)} in the"
                          f" configuration but {source} makes {datatypes.name_of_config(data_type)}")
        if not datatypes.dims_fit(dims, _full_dims(list(t.dims), batched)):
            raise invalid(f"{prefix}: output '{t.name}' has shape {_full_dims(list(t.dims), batched)} in the"
                          f" configuration but {source} makes {dims}")
    # Run the graph on names only: a step that never becomes ready waits on itself.
    available = {t.name for t in config.input}
    waiting = set(range(len(steps)))
    while waiting:
        ready = {i for i in waiting if set(steps[i].input_map.values()) <= available}
        if not ready:
            raise invalid(f"{prefix}: steps {sorted(waiting)} wait on each other's outputs (a cycle)")
        for i in ready:
            available.update(steps[i].output_map.values())
        waiting -= ready


@dataclass(eq=False)
class _Pending:
    task: asyncio.Task
    enqueued_ns: int
    trace: Any = None


@dataclass
class EnsembleScheduler:
    """Takes a Model's scheduler's place for an ensemble: each request runs the graph."""

    config: mc.ModelConfig
    lookup: Lookup
    stats: ModelStats
    output_names: list[str]
    _running: set = field(default_factory=set)
    _closed: bool = False

    @property
    def idle(self) -> bool:
        return not self._running

    def enqueue(self, inputs: dict[str, np.ndarray], batch_size: int, priority: int = 0,
                timeout_us: int | None = None, **_: Any) -> _Pending:
        if self._closed:
            raise unavailable(f"model '{self.config.name}' is being unloaded")
        start = time.monotonic_ns()
        task = asyncio.get_running_loop().create_task(self._run(dict(inputs), batch_size, priority, timeout_us, start))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        self.stats.pending += 1
        return _Pending(task, start)

    async def wait(self, pending: _Pending) -> dict[str, np.ndarray]:
        try:
            return await pending.task
        except asyncio.CancelledError:
            pending.task.cancel()  # the client went away: steps not started never start
            raise

    async def _run(self, tensors: dict[str, np.ndarray], batch_size: int, priority: int,
                   timeout_us: int | None, start: int) -> dict[str, np.ndarray]:
        try:
            await self._graph(tensors, priority, timeout_us)
        except BaseException:
            self.stats.pending -= 1
            self.stats.record_failure(time.monotonic_ns() - start)
            raise
        self.stats.pending -= 1
        total = time.monotonic_ns() - start
        self.stats.record_execution(batch_size or 1, 0, 0, 0)
        self.stats.record_success(total, 0, 0, 0, 0)
        return {name: tensors[name] for name in self.output_names}

    async def _graph(self, tensors: dict[str, np.ndarray], priority: int, timeout_us: int | None) -> None:
        steps = list(self.config.ensemble_scheduling.step)
        waiting = set(range(len(steps)))
        running: dict[asyncio.Task, int] = {}
        try:
            while waiting or running:
                for i in sorted(i for i in waiting if all(t in tensors for t in steps[i].input_map.values())):
                    waiting.discard(i)
                    running[asyncio.ensure_future(self._step(steps[i], tensors, priority, timeout_us))] = i
                if not running:  # cannot happen for a checked graph
                    raise unavailable(f"ensemble '{self.config.name}': steps {sorted(waiting)} cannot run")
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = steps[running.pop(task)]
                    outputs = task.result()  # a failed step fails the request
                    for key, tensor in step.output_map.items():
                        tensors[tensor] = outputs[key]
        finally:
            for task in running:
                task.cancel()

    async def _step(self, step: mc.ModelEnsembling.Step, tensors: dict[str, np.ndarray], priority: int,
                    timeout_us: int | None) -> dict[str, np.ndarray]:
        model = self.lookup(step.model_name, _version(step))
        request = InferRequest(
            {key: tensors[tensor] for key, tensor in step.input_map.items()},
            [RequestedOutput(key) for key in step.output_map],
            priority=priority, timeout_us=timeout_us,
        )
        response = await model.infer(request)
        return response.outputs

    async def close(self) -> None:
        await asyncio.sleep(0)
        self._closed = True
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
