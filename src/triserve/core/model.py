"""One loaded model version: checks requests against its config and runs them through its scheduler."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Awaitable, Mapping, Sequence

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.core.classification import classify
from triserve.core.processors import Processor
from triserve.core.scheduler import BatchingPolicy, RunFn, Scheduler
from triserve.core.sequence import SequenceBatcher, SequencePolicy
from triserve.core.stats import ModelStats
from triserve.core.types import InferRequest, InferResponse, RequestedOutput
from triserve.errors import invalid
from triserve.signatures import SIGNATURE_NAME, Signature

log = logging.getLogger("triserve")

INT64_MAX = 2**63 - 1  # the most elements (and bytes) a tensor may have, as in Triton


def read_labels(model_dir: Path, config: mc.ModelConfig) -> dict[str, list[str]]:
    labels = {}
    for output in config.output:
        if output.label_filename:
            path = model_dir / output.label_filename
            if not path.is_file():
                raise invalid(f"label file {path} of output '{output.name}' not found")
            if path.suffix == ".json":
                labels[output.name] = _index_to_name(path)
            else:
                labels[output.name] = path.read_text().splitlines()
    return labels


# Label files looked for beside a model whose outputs were auto-completed: Triton's, TorchServe's.
LABEL_FILES = ("labels.txt", "index_to_name.json")


def find_label_file(model_dir: Path, config: mc.ModelConfig) -> None:
    """An auto-completed model with one output and a label file beside it: the output's labels."""
    if len(config.output) != 1 or config.output[0].label_filename:
        return
    for name in LABEL_FILES:
        if (model_dir / name).is_file():
            config.output[0].label_filename = name
            return


def _index_to_name(path: Path) -> list[str]:
    """TorchServe's {"0": "tench"} or {"0": ["n01440764", "tench"]} as labels (a list's last element)."""
    import json

    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
        pairs = sorted((int(k), v[-1] if isinstance(v, list) else v) for k, v in mapping.items())
    except (ValueError, TypeError, AttributeError, IndexError):
        raise invalid(f"label file {path.name} is not a JSON object of class index -> name") from None
    labels = [""] * (pairs[-1][0] + 1 if pairs else 0)
    for index, name in pairs:
        if index >= 0:
            labels[index] = str(name)
    return labels


class Model:
    def __init__(
        self,
        config: mc.ModelConfig,
        version: int,
        labels: dict[str, list[str]],
        runners: list[RunFn],
        closers: list,
        batch_limit: int | None = None,
        processor: Processor | None = None,
        sequence: SequencePolicy | None = None,
        signatures: Mapping[str, Signature] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.version = version
        self.version_str = str(version)
        self.labels = labels
        self.processor = processor  # what turns request rows into tensors and back (TorchServe handlers)
        self.max_batch_size = config.max_batch_size
        self.inputs = {t.name: t for t in config.input}
        self.outputs = {t.name: t for t in config.output}
        self.output_names = list(self.outputs)
        self._input_datatypes = {t.name: datatypes.name_of_config(t.data_type) for t in config.input}
        self._required = {t.name for t in config.input if not t.optional}
        self.stats = ModelStats(self.name, version)
        self.loaded_at = time.time()  # when this version's instances became ready
        self.load_seconds = 0.0  # how long the load took (the manager sets it)
        self._closers = closers
        # The model's named signatures (TensorFlow SavedModels): a request naming one
        # (parameters[signatures.SIGNATURE_NAME]) runs it with its own tensors, see infer_signature().
        self.signatures = dict(signatures or {})
        self.sequence_policy = sequence
        if sequence is None and config.WhichOneof("scheduling_choice") == "sequence_batching":
            self.sequence_policy = SequencePolicy.from_config(config)
        self.scheduler: Scheduler | SequenceBatcher
        if self.sequence_policy is not None:
            self.scheduler = SequenceBatcher(
                self.name, runners, self.output_names, self.sequence_policy, config.max_batch_size, self.stats
            )
        else:
            self.scheduler = Scheduler(
                self.name, runners, self.output_names, BatchingPolicy.from_config(config, config.max_batch_size if batch_limit is None else batch_limit),
                self.stats,
            )

    @property
    def instance_count(self) -> int:
        return len(self._closers)

    @property
    def platform(self) -> str:
        return self.config.platform or self.config.backend

    # -- inference ------------------------------------------------------------------------
    def infer(self, request: InferRequest) -> Awaitable[InferResponse]:
        """Validate and queue the request now; the returned awaitable gives the response.

        Queuing happens before this returns, so a caller that looked this version up is
        answered by it even if a reload swaps in a new version before the caller awaits.
        """
        if request.trace is not None:
            request.trace.model_name, request.trace.model_version = self.name, self.version_str
            request.trace.request_id = request.id
            request.trace.stamp("REQUEST_START")
        if SIGNATURE_NAME in request.parameters and self.signatures:
            return self.infer_signature(request, request.parameters[SIGNATURE_NAME])
        headers = {name: (_datatype(array.dtype), array.shape) for name, array in request.inputs.items()}
        batch_size = self.check_inputs(headers, request.id)
        requested = request.outputs or [RequestedOutput(name) for name in self.output_names]
        seen: set[str] = set()
        for out in requested:
            if out.name in seen:
                raise invalid(f"[request id: {request.id or '<id_unknown>'}] output '{out.name}' already exists in request")
            seen.add(out.name)
            if out.name not in self.outputs:
                raise invalid(f"unexpected inference output '{out.name}' for model '{self.name}'")
            if out.class_count < 0:
                raise invalid(f"classification count for output '{out.name}' must be positive")
        inputs = self._framework_inputs(request.inputs, batch_size)
        if isinstance(self.scheduler, SequenceBatcher):
            pending = self.scheduler.enqueue(
                inputs, batch_size, request.sequence_id, request.sequence_start, request.sequence_end, request.timeout_us
            )
            if request.trace is not None:
                pending.trace = request.trace  # the sequence batcher stamps its compute times
        else:
            pending = self.scheduler.enqueue(inputs, batch_size, request.priority, request.timeout_us,
                                             trace=request.trace)
        if request.trace is not None:
            request.trace.stamp("QUEUE_START", pending.enqueued_ns)
            if request.trace.tensors and not isinstance(self.scheduler, SequenceBatcher):
                # Triton's dynamic batcher (and ensemble scheduler) report the queued inputs;
                # its sequence batcher does not (core src/dynamic_batch_scheduler.cc Enqueue).
                for name, array in request.inputs.items():
                    request.trace.tensor("TENSOR_QUEUE_INPUT", name, headers[name][0], array, pending.enqueued_ns)
        return self._respond(request, requested, pending)

    def infer_signature(self, request: InferRequest, name: str) -> Awaitable[InferResponse]:
        """Queue a request for the named signature: its inputs and outputs are the signature's
        keys; shapes and datatypes are the framework's to check (as TF Serving leaves them to
        TensorFlow). It runs alone, never joined into a batch; no outputs asked means all."""
        signature = self.signatures.get(name)
        if signature is None:
            raise invalid(f'Serving signature key "{name}" not found.')
        for key, array in request.inputs.items():
            if key not in signature.inputs:
                raise invalid(
                    f"input tensor alias not found in signature: {key}. Inputs expected to be in the set"
                    f" {{{','.join(sorted(signature.inputs))}}}."
                )
            element_count(key, _datatype(array.dtype), array.shape)
        if len(request.inputs) != len(signature.inputs):
            missing = sorted(set(signature.inputs) - request.inputs.keys())
            raise invalid(
                f"input size does not match signature: {len(request.inputs)}!={len(signature.inputs)}"
                f" len({{{','.join(sorted(request.inputs))}}}) != len({{{','.join(sorted(signature.inputs))}}})."
                f" Sent extra: {{}}. Missing but required: {{{','.join(missing)}}}."
            )
        requested = [out.name for out in request.outputs] if request.outputs else list(signature.outputs)
        seen: set[str] = set()
        for out in requested:
            if out not in signature.outputs:
                raise invalid(
                    f"output tensor alias not found in signature: {out} Outputs expected to be in the set"
                    f" {{{','.join(sorted(signature.outputs))}}}."
                )
            if out in seen:
                raise invalid(f"duplicate output tensor alias: {out}")
            seen.add(out)
        if not isinstance(self.scheduler, Scheduler):
            raise invalid(f"model '{self.name}' batches sequences; only its configured signature runs")
        pending = self.scheduler.enqueue(
            dict(request.inputs), 0, request.priority, request.timeout_us, signature=name, outputs=requested
        )
        return self._respond_signature(request, pending)

    async def _respond_signature(self, request: InferRequest, pending) -> InferResponse:
        results = await self.scheduler.wait(pending)
        return InferResponse(self.name, self.version_str, request.id, dict(results))

    async def _respond(self, request: InferRequest, requested: list[RequestedOutput], pending) -> InferResponse:
        results = await self.scheduler.wait(pending)
        outputs = {}
        batched = self.max_batch_size > 0
        for out in requested:
            value = results[out.name]
            spec = self.outputs[out.name]
            if spec.HasField("reshape"):
                value = value.reshape(([value.shape[0]] if batched else []) + list(spec.dims))
            if request.trace is not None and request.trace.tensors:  # as Triton's InferenceResponse::Send
                request.trace.tensor("TENSOR_BACKEND_OUTPUT", out.name, _datatype(value.dtype), value)
            if out.class_count:
                value = classify(value, out.class_count, self.labels.get(out.name, []), batched, out.name)
            outputs[out.name] = value
        if request.trace is not None:
            request.trace.stamp("INFER_RESPONSE_COMPLETE")
            request.trace.stamp("REQUEST_END")
        return InferResponse(self.name, self.version_str, request.id, outputs)

    def check_inputs(
        self, inputs: Mapping[str, tuple[str, Sequence[int]]], request_id: str = "", split: bool = False
    ) -> int:
        """Check input names, datatypes and shapes (`name -> (v2 datatype, shape)`) against the
        config before any tensor content is read; returns the batch size (0 if the model does
        not batch). `split`: the data plane splits batches above max_batch_size, so any size goes."""
        prefix = f"[request id: {request_id or '<id_unknown>'}] "
        for name, (datatype, shape) in inputs.items():
            if not datatypes.is_known(datatype):
                raise invalid(f"{prefix}input '{name}': unknown datatype '{datatype}'")
            element_count(name, datatype, shape)
        missing = self._required - inputs.keys()
        unknown = inputs.keys() - self.inputs.keys()
        if unknown:
            raise invalid(f"{prefix}unexpected inference input '{sorted(unknown)[0]}' for model '{self.name}'")
        if missing:
            raise invalid(
                f"{prefix}expected {len(self._required)} inputs but got {len(inputs)} inputs for model"
                f" '{self.name}'. Got input(s) {sorted(inputs)}, but missing required input(s)"
                f" {sorted(missing)}. Please provide all required input(s)."
            )
        batch_size = 0
        for name, (datatype, shape) in inputs.items():
            spec = self.inputs[name]
            expected_type = self._input_datatypes[name]
            if datatype != expected_type:
                raise invalid(
                    f"{prefix}inference input '{name}' data-type is '{datatype}',"
                    f" but model '{self.name}' expects '{expected_type}'"
                )
            dims = list(spec.dims)
            shape = list(shape)
            if self.max_batch_size > 0:
                expected = [-1, *dims]
                if not shape or not datatypes.dims_fit(shape[1:], dims):
                    raise invalid(
                        f"{prefix}unexpected shape for input '{name}' for model '{self.name}'. Expected"
                        f" {_fmt(expected)}, got {_fmt(shape)}. NOTE: Setting a non-zero max_batch_size in the"
                        " model config requires a batch dimension to be prepended to each input shape. If you"
                        " want to specify the full shape including the batch dim in your input dims config,"
                        " try setting max_batch_size to zero. See the model configuration docs for more info"
                        " on max_batch_size."
                    )
                if batch_size and shape[0] != batch_size:
                    raise invalid(
                        f"{prefix}input '{name}' batch size {shape[0]} does not match the batch size"
                        f" {batch_size} of the other inputs for model '{self.name}'"
                    )
                batch_size = shape[0]
            elif not datatypes.dims_fit(shape, dims):
                raise invalid(
                    f"{prefix}unexpected shape for input '{name}' for model '{self.name}'. Expected"
                    f" {_fmt(dims)}, got {_fmt(shape)}"
                )
        too_large = batch_size > self.max_batch_size and not split
        if self.max_batch_size > 0 and (batch_size < 1 or too_large):
            raise invalid(
                f"{prefix}inference request batch-size must be <= {self.max_batch_size} for"
                f" '{self.name}', got {batch_size}"
                if batch_size
                else f"{prefix}inference request batch-size must be at least 1 for '{self.name}'"
            )
        return batch_size

    def _framework_inputs(self, inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
        """Apply config `reshape`: the framework may want another shape than clients send."""
        result = {}
        for name, array in inputs.items():
            spec = self.inputs[name]
            if spec.HasField("reshape"):
                array = array.reshape(([batch_size] if self.max_batch_size > 0 else []) + list(spec.reshape.shape))
            result[name] = array
        return result

    async def close(self) -> None:
        await self.scheduler.close()
        for close in self._closers:
            try:
                close()
            except Exception:  # a backend failing to free must not stop an unload
                log.exception("closing model '%s' version %d", self.name, self.version)


def _fmt(shape: Sequence[int]) -> str:
    """A shape as Triton writes it; a very long one (a hostile request's) is cut short."""
    if len(shape) > _SHOWN_DIMS:
        return "[" + ",".join(str(d) for d in shape[:_SHOWN_DIMS]) + f",... ({len(shape)} dimensions)]"
    return "[" + ",".join(str(d) for d in shape) + "]"


_SHOWN_DIMS = 16


def element_count(name: str, datatype: str, shape: Sequence[int]) -> int:
    """How many elements a tensor of `shape` has. Shapes no array can hold are refused with
    Triton's words; numpy holds no array whose nonzero dimensions multiply beyond int64, even
    one with a zero dimension, so those count too."""
    count = 1
    nonzero = 1
    for d in shape:
        if d < 0:
            raise invalid(
                f"invalid shape for input '{name}': shape {_fmt(shape)} contains one or more invalid dimensions"
            )
        count *= d
        nonzero *= d or 1
        if nonzero > INT64_MAX:  # stop before the product grows with a long shape
            raise invalid(
                f"invalid shape for input '{name}': shape {_fmt(shape)} causes total element count to exceed"
                f" maximum size of {INT64_MAX}"
            )
    size = datatypes.ELEMENT_SIZE.get(datatype, np.dtype(np.object_).itemsize)
    if nonzero * size > INT64_MAX:
        raise invalid(
            f"byte size overflow for input '{name}': element count ({nonzero}) * data type size ({size}) exceeds"
            f" maximum allowed size ({INT64_MAX})"
        )
    return count


def _datatype(dtype: np.dtype) -> str:
    """The v2 datatype of an array; fixed-width text and dtypes without one keep numpy's name,
    so that they never pass for a model's BYTES (object arrays) or any other input."""
    if dtype.kind in "SU":
        return dtype.name
    try:
        return datatypes.from_numpy(dtype)
    except KeyError:
        return dtype.name
