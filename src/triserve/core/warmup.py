"""Before a model is READY: Triton's `model_warmup`, and a measurement of which batch sizes pay off.

Batching is not free on a CPU: on 2 cores a batch of 8 EfficientNet-Lite0 images took longer
per image than one image alone. When `dynamic_batching` names no `preferred_batch_size`, the
batcher caps batches at the size that measured the highest throughput on this machine, so
turning batching on never costs throughput. A `preferred_batch_size` in the config is taken as
the operator's choice and is not second-guessed.

The choice must not be noise (a busy machine once gave the same model caps of 1, 1, 2, 2 on four
restarts). So the sizes are measured in interleaved rounds (every size once per round, in a
rotated order, so a drift of the machine's speed hits all sizes alike); each size is scored by
the median over rounds of its time relative to the round's median, and a larger size is chosen
only when it beats the current choice by a margin (`CALIBRATION_MARGIN`). The result is
cached per model file and machine (`BatchCalibration.cache_dir`), so a restart reuses it without
measuring, and without slowing the models already serving. `mode="off"` caps at
max_batch_size, as Triton does. The choice and its measurements are in the model's config as the
parameter `batch_calibration` (a JSON string).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve import datatypes
from triserve.errors import invalid

log = logging.getLogger("triserve")

CALIBRATION_ROUNDS = 7  # interleaved rounds: every batch size once per round
CALIBRATION_MARGIN = 1.10  # a larger batch must be 10% faster per item than the current choice
CALIBRATION_VERSION = 2  # bump when the method changes: older cache entries are then ignored
PARAMETER = "batch_calibration"  # the config parameter that shows the choice
MODES = ("on", "off", "remeasure")

# The distributions whose version a platform's measurements depend on.
_FRAMEWORKS = {
    "onnxruntime_onnx": ("onnxruntime", "onnxruntime-gpu"),
    "pytorch_libtorch": ("torch",),
    "tensorflow_savedmodel": ("tensorflow-cpu", "tensorflow"),
    "openvino": ("openvino",),
}


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


@dataclass(frozen=True)
class BatchCalibration:
    """How the dynamic batcher's cap is chosen at load.

    mode: "on" (a cached result for this model file and machine, else measure and cache it),
    "remeasure" (measure even when cached, and cache the new result), "off" (no measurement:
    batches up to max_batch_size). cache_dir: where results are kept (None: not cached)."""

    mode: str = "on"
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"batch calibration mode must be one of {', '.join(MODES)}, not {self.mode!r}")


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/triserve (~/.cache/triserve when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "triserve"


def batch_sizes(limit: int) -> list[int]:
    return sorted({1, *[s for s in (2, 4, 8, 16, 32) if s < limit], limit})


def measurable(config: mc.ModelConfig) -> str:
    """Why the batch sizes cannot be measured ("" when they can)."""
    if config.max_batch_size <= 1:
        return "max_batch_size is at most 1"
    if any(-1 in t.dims for t in config.input):
        return "an input has variable dims"
    if any(t.data_type == mc.TYPE_STRING for t in config.input):
        return "an input is BYTES"
    return ""


def choose_cap(per_item: dict[int, list[float]], margin: float = CALIBRATION_MARGIN) -> int:
    """The batch size to cap at, from per-item seconds measured in interleaved rounds
    (`per_item[size][round]`). Each size's score is the median over rounds of its time relative
    to the median of all sizes in the same round (a drift of the machine's speed cancels, and no
    single measurement is the yardstick); sizes are tried in ascending order, and a larger one is
    chosen only when its score beats the current choice's by `margin`."""
    sizes = sorted(per_item)
    rounds = min(len(t) for t in per_item.values())
    yardstick = [statistics.median(per_item[s][r] for s in sizes) for r in range(rounds)]
    score = {s: statistics.median(per_item[s][r] / yardstick[r] for r in range(rounds) if yardstick[r] > 0)
             if any(yardstick) else 1.0 for s in sizes}
    chosen = sizes[0]
    for size in sizes[1:]:
        if score[size] * margin < score[chosen]:
            chosen = size
    return chosen


def measure_rounds(sizes: list[int], run: Callable[[int], float], rounds: int = CALIBRATION_ROUNDS) -> dict[int, list[float]]:
    """`run(size)` -> seconds per item of one batch of `size`, called once per size and round,
    each round starting at the next size (so no size always runs first, after the others)."""
    for size in sizes:
        run(size)  # the first run of a shape can be slow; not counted
    per_item: dict[int, list[float]] = {size: [] for size in sizes}
    for r in range(rounds):
        for size in sizes[r % len(sizes):] + sizes[: r % len(sizes)]:
            per_item[size].append(run(size))
    return per_item


def _instances_runner(config: mc.ModelConfig, instances: list[Any], pool: ThreadPoolExecutor) -> Callable[[int], float]:
    """All instances at once: batching only matters under load, and a batch that pays off on an
    idle machine can lose once every core is busy."""
    outputs = [o.name for o in config.output]
    inputs_by_size: dict[int, dict[str, np.ndarray]] = {}

    def run(size: int) -> float:
        inputs = inputs_by_size.get(size)
        if inputs is None:
            inputs = inputs_by_size[size] = {
                t.name: np.zeros([size, *t.dims], datatypes.numpy_of_config(t.data_type)) for t in config.input}
        start = time.perf_counter()
        list(pool.map(lambda instance: instance.run(inputs, outputs), instances))
        return (time.perf_counter() - start) / (size * len(instances))

    return run


def _hash_path(path: Path, digest: Any) -> None:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    for f in files:
        digest.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)


def _framework_versions(platform_name: str) -> dict[str, str]:
    versions = {}
    for dist in _FRAMEWORKS.get(platform_name, ()):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(config: mc.ModelConfig, model_files: list[Path], instance_count: int) -> tuple[str, dict]:
    """What a measurement depends on: the model's files, the config's shapes and threads, the
    instances, the machine and the framework's version. Returns (hex digest, readable parts)."""
    from triserve.backends import cpu_count  # the affinity-aware core count

    digest = hashlib.sha256()
    for path in model_files:
        _hash_path(path, digest)
    shaped = mc.ModelConfig(
        platform=config.platform, backend=config.backend, max_batch_size=config.max_batch_size,
        input=config.input, output=config.output, instance_group=config.instance_group)
    for key, value in sorted(config.parameters.items()):
        if key != PARAMETER:
            shaped.parameters[key].CopyFrom(value)
    parts = {
        "model_sha256": digest.hexdigest(),
        "config_sha256": hashlib.sha256(shaped.SerializeToString(deterministic=True)).hexdigest(),
        "instances": instance_count,
        "cpu": _cpu_model(),
        "cores": cpu_count(),
        "frameworks": _framework_versions(config.platform),
        "method": CALIBRATION_VERSION,
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return key, parts


def _read_cache(path: Path, key: str, limit: int) -> dict | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("cap"), int):
        return None
    if not 1 <= entry["cap"] <= limit:
        return None
    return entry


def _write_cache(path: Path, entry: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entry, indent=1, sort_keys=True))
        os.replace(temporary, path)
    except OSError as e:  # a read-only cache costs a measurement per start, nothing else
        log.warning("batch calibration: could not write the cache file %s: %s", path, e.strerror or e)


def calibrate(
    config: mc.ModelConfig,
    instances: list[Any],
    model_files: list[Path],
    settings: BatchCalibration | None = None,
    measure: Callable[[int], float] | None = None,
) -> tuple[int, dict]:
    """The dynamic batcher's cap, and what it was chosen from (the `batch_calibration` parameter's
    content). `measure(size)` -> seconds per item (default: every instance runs a zero batch)."""
    settings = settings or BatchCalibration()
    limit = config.max_batch_size
    if settings.mode == "off":
        return limit, {"mode": "off", "cap": limit, "source": "off"}
    why_not = measurable(config) or ("" if instances or measure else "no instances")
    if why_not:
        return limit, {"mode": settings.mode, "cap": limit, "source": "not measured", "reason": why_not}
    sizes = batch_sizes(limit)
    path = key = None
    parts: dict = {}
    if settings.cache_dir is not None:
        key, parts = cache_key(config, model_files, len(instances))
        path = settings.cache_dir / "batch-calibration" / f"{key}.json"
        cached = _read_cache(path, key, limit) if settings.mode == "on" else None
        if cached is not None:
            report = {"mode": settings.mode, "cap": cached["cap"], "source": "cache",
                      "ms_per_item": cached.get("ms_per_item", {}), "measured_at": cached.get("measured_at", "")}
            log.info("model '%s': dynamic batcher caps batches at %d (cached calibration %s)",
                     config.name, cached["cap"], path.name[:12])
            return cached["cap"], report
    started = time.perf_counter()
    if measure is None:
        with ThreadPoolExecutor(max(len(instances), 1)) as pool:
            per_item = measure_rounds(sizes, _instances_runner(config, instances, pool))
    else:
        per_item = measure_rounds(sizes, measure)
    chosen = choose_cap(per_item)
    medians = {str(s): round(statistics.median(t) * 1000, 4) for s, t in per_item.items()}
    report = {
        "mode": settings.mode, "cap": chosen, "source": "measured", "rounds": CALIBRATION_ROUNDS,
        "margin": CALIBRATION_MARGIN, "instances_busy": len(instances), "ms_per_item": medians,
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info(
        "model '%s': dynamic batcher caps batches at %d (median ms per item over %d interleaved rounds with"
        " %d instance(s) busy, by batch size: %s)",
        config.name, chosen, CALIBRATION_ROUNDS, len(instances), ", ".join(f"{s}: {t:.2f}" for s, t in medians.items()),
    )
    if path is not None:
        measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report["measured_at"] = measured_at
        _write_cache(path, {"key": key, "cap": chosen, "ms_per_item": medians, "measured_at": measured_at,
                            "depends_on": parts})
    return chosen, report


def record(config: mc.ModelConfig, report: dict) -> None:
    """Show the choice in the model's config: parameter `batch_calibration`, a JSON string."""
    config.parameters[PARAMETER].string_value = json.dumps(report, sort_keys=True)
