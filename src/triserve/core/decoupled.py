"""Decoupled models (`model_transaction_policy { decoupled: true }`): any number of responses
per request, then a final flag. Only streams carry them (gRPC ModelStreamInfer); other endpoints
refuse such a model's requests, as Triton does.

Requests go to the instances in turn; an instance executes one request at a time and takes the
next once execute returned, while the earlier one's responses may still come
(`run_stream(inputs, outputs, emit)` of the backend returns after the last response).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve.backends import EXECUTION
from triserve.core.scheduler import EXECUTION_THREADS, IN_FLIGHT, BatchingPolicy
from triserve.core.stats import ModelStats
from triserve.core.types import InferRequest, InferResponse, RequestedOutput
from triserve.errors import ServerError, invalid, unavailable

# run_stream(inputs, output_names, emit(outputs | ServerError | None, final)) on an execution thread
StreamFn = Callable[[dict[str, np.ndarray], list[str], Callable[[Any, bool], None]], None]

REFUSED = "doesn't support models with decoupled transaction policy"


def is_decoupled(config: mc.ModelConfig) -> bool:
    return config.model_transaction_policy.decoupled


def refusal(model_name: str) -> ServerError:
    """What a non-streaming endpoint answers for a decoupled model (Triton's words)."""
    return invalid(f"this endpoint {REFUSED} (model '{model_name}'); use the gRPC stream (ModelStreamInfer)")


class DecoupledScheduler:
    """Takes a Model's scheduler's place for a decoupled model."""

    def __init__(self, config: mc.ModelConfig, streams: list[StreamFn], stats: ModelStats) -> None:
        self.config = config
        self.stats = stats
        self.policy = BatchingPolicy.from_config(config, 0).policies[0]
        self._streams = list(streams)
        self._next = 0
        self._active = 0
        self._closed = False

    @property
    def idle(self) -> bool:
        return self._active == 0

    def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        raise refusal(self.config.name)

    async def wait(self, pending: Any) -> Any:
        raise refusal(self.config.name)

    async def stream(self, model: Any, request: InferRequest) -> AsyncIterator[InferResponse | ServerError]:
        """Check the request as any model does, then yield each response as the model sends it
        (a ServerError for an error response; a failed execute raises)."""
        if self._closed:
            raise unavailable(f"model '{model.name}' is being unloaded")
        headers = {name: (_datatype(array), array.shape) for name, array in request.inputs.items()}
        batch_size = model.check_inputs(headers, request.id)
        requested = request.outputs or [RequestedOutput(name) for name in model.output_names]
        for out in requested:
            if out.name not in model.outputs:
                raise invalid(f"unexpected inference output '{out.name}' for model '{model.name}'")
        names = [out.name for out in requested]
        timeout_us = self.policy.timeout_us(request.timeout_us)
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[tuple[Any, bool]] = asyncio.Queue()

        def emit(item: Any, final: bool) -> None:  # on the execution thread
            loop.call_soon_threadsafe(answers.put_nowait, (item, final))

        start = time.monotonic_ns()
        self._active += 1
        self.stats.pending += 1
        run = self._streams[self._next % len(self._streams)]
        self._next += 1
        queued = time.monotonic_ns()
        deadline = time.monotonic() + timeout_us / 1e6 if timeout_us else 0.0
        traced = request.trace  # a traced request (core.trace): Model.infer's stamps, compute around execute
        if traced is not None:
            traced.model_name, traced.model_version, traced.request_id = model.name, model.version_str, request.id
            traced.stamp("REQUEST_START", start)
            traced.stamp("QUEUE_START", queued)
            for name, array in request.inputs.items():
                traced.tensor("TENSOR_QUEUE_INPUT", name, headers[name][0], array, queued)

        def execute() -> None:
            EXECUTION.deadline = deadline
            if traced is not None:
                traced.stamp("COMPUTE_START")
            try:
                with IN_FLIGHT.running():
                    run(dict(request.inputs), names, emit)
            finally:
                EXECUTION.deadline = 0.0
                if traced is not None:
                    traced.stamp("COMPUTE_END")

        finished = loop.run_in_executor(EXECUTION_THREADS, execute)
        failed: BaseException | None = None
        try:
            while True:
                getter = asyncio.ensure_future(answers.get())
                done, _ = await asyncio.wait({getter, finished}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    while not answers.empty():  # what came before the end
                        item, final = answers.get_nowait()
                        if item is not None:
                            yield self._response(model, request, item, names)
                    finished.result()  # raises the instance's error
                    break
                item, final = getter.result()
                if item is not None:
                    yield self._response(model, request, item, names)
                if final:
                    await finished
                    break
        except BaseException as e:
            failed = e
            raise
        finally:
            if not finished.done():  # the client went away: counted until the model is done
                finished.add_done_callback(lambda _: self._release())
            else:
                self._release()
            end = time.monotonic_ns()
            if traced is not None:
                traced.stamp("REQUEST_END", end)
            self.stats.pending -= 1
            if failed is None:
                self.stats.record_execution(batch_size or 1, 0, end - queued, 0)
                self.stats.record_success(end - start, queued - start, 0, end - queued, 0)
            else:
                self.stats.record_failure(end - start)

    def _release(self) -> None:
        self._active -= 1

    @staticmethod
    def _response(model: Any, request: InferRequest, item: Any, names: list[str]) -> InferResponse | ServerError:
        if isinstance(item, BaseException):
            return item  # an error response: the stream says so and goes on
        outputs = {n: item[n] for n in names if n in item}
        if request.trace is not None and request.trace.tensors:  # as Triton's InferenceResponse::Send
            for name, value in outputs.items():
                request.trace.tensor("TENSOR_BACKEND_OUTPUT", name, _datatype(value), value)
        return InferResponse(model.name, model.version_str, request.id, outputs)

    async def close(self) -> None:
        await asyncio.sleep(0)
        while self._active:
            await asyncio.sleep(0.005)
        self._closed = True


def _datatype(array: np.ndarray) -> str:
    from triserve import datatypes

    if array.dtype.kind in "SU":
        return array.dtype.name
    try:
        return datatypes.from_numpy(array.dtype)
    except KeyError:
        return array.dtype.name
