"""The benchmark's sections: each measures raw in-process and served, and returns its table."""

from __future__ import annotations

import argparse
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve.bench.load import HOST, GRPCSender, HTTPSender, Sender, http_request, served
from triserve.bench.models import (BenchModel, jpeg, photo, read_bench_model, v2_binary_request, v2_bytes_request,
                                   v2_grpc_request)
from triserve.bench.perf import find_perf_analyzer, perf_analyzer
from triserve.bench.raw import FRAMEWORKS, Runner, measure_raw, open_runners
from triserve.bench.results import Result, Table, best, median_of, median_ratio, progress, verdict
from triserve.bench.servers import RunningServer, derived_model, link_repository, running_server

RAW_BATCHES = (1, 4)
GRPC_CONCURRENCIES = (1, 16)
BACKENDS_CONCURRENCY = 8
GRPC_AIM_MS = 1.0  # aim: gRPC p50 at concurrency 1 within 1 ms of raw
TORCHSERVE_AIMS = {1: 0.6, 8: 0.9}  # aim: served JPEG requests/s at least these fractions of the in-process ceiling
SWEEP_CONCURRENCIES = (1, 2, 4, 8, 16, 32)
SWEEP_DROP = 0.10  # aim: no layout loses more than 10% from its best point as concurrency grows
OPENVINO_CONCURRENCIES = (1, 8)
OPENVINO_AIM = 0.9  # aim: served OpenVINO at least 0.9 of raw OpenVINO
SHM_CONCURRENCY = 8
ENSEMBLE_MODEL = "efficientnet_lite0_jpeg"  # export-examples' ensemble: Python preprocess, then the ONNX model
ENSEMBLE_CONCURRENCY = 8
ENSEMBLE_TOP_K = 5
ROUNDS = 3  # sweep, shm and ensemble: each measurement in 3 interleaved rounds of --seconds / 3
# Each section's aim, printed under the run's heading; its summary line says whether it was met.
AIMS = {
    "grpc": f"gRPC p50 at concurrency {GRPC_CONCURRENCIES[0]} within {GRPC_AIM_MS:g} ms of raw onnxruntime",
    "torchserve": "TorchServe JPEG requests/s at least " + " and ".join(
        f"{aim:g} of the in-process ceiling at concurrency {c}" for c, aim in TORCHSERVE_AIMS.items()),
    "sweep": f"no layout loses more than {SWEEP_DROP:.0%} from its best point up to concurrency {SWEEP_CONCURRENCIES[-1]}",
    "openvino": f"served OpenVINO at least {OPENVINO_AIM:g} of raw OpenVINO",
}


class Bench:
    """The options, the photo, and raw results measured once per run and shared by the sections."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        from triserve.backends import cpu_count
        from triserve.core.instances import DEFAULT_CPU_INSTANCES

        self.repo = Path(args.model_repository)
        self.store = Path(args.model_store) if args.model_store else self.repo.parent / "model_store"
        self.archive = args.archive
        self.perf_analyzer = args.perf_analyzer
        self.onnx_model = args.model_name
        self.backend_models = [n.strip() for n in args.backend_models.split(",") if n.strip()]
        self.concurrencies = [int(c) for c in args.concurrency.split(",")]
        self.seconds = args.seconds
        self.tmp = tmp
        self.cores = cpu_count()
        # What the server runs by default: two instances sharing the cores.
        self.server_threads = (DEFAULT_CPU_INSTANCES, max(1, self.cores // DEFAULT_CPU_INSTANCES))
        self.onnx_configs = sorted({(self.cores, 1), (1, self.cores), self.server_threads})
        self.image = photo()
        self.jpeg = jpeg(self.image)
        self._models: dict[str, BenchModel] = {}
        self._raw: dict[tuple[str, int, int, int], Result] = {}

    def model(self, name: str, repo: Path | None = None) -> BenchModel:
        """A model of the repository (or of `repo`, a repository the run made)."""
        if name not in self._models:
            self._models[name] = read_bench_model(repo or self.repo, name, self.image)
        return self._models[name]

    def raw(self, name: str, count: int, threads: int, batches: tuple[int, ...] = RAW_BATCHES) -> list[Result]:
        """`count` instances x `threads` threads in-process, one result per batch size (each measured once per run)."""
        model = self.model(name)
        missing = [b for b in batches if (name, count, threads, b) not in self._raw]
        if missing:
            runners = open_runners(model.platform, model.model_file, count, threads)
            for batch in missing:
                x = np.ascontiguousarray(np.repeat(model.sample[None], batch, axis=0))
                label = f"raw {model.framework} {name}, {count} instance(s) x {threads} thread(s), batch {batch}"
                calls = [functools.partial(run, x) for run in runners]
                self._raw[name, count, threads, batch] = progress(measure_raw(label, calls, batch, self.seconds))
        return [self._raw[name, count, threads, b] for b in batches]

    def raw_onnx(self) -> list[Result]:
        """onnxruntime over the instance x thread configurations and batch sizes; the best is the baseline."""
        return [r for count, threads in self.onnx_configs for r in self.raw(self.onnx_model, count, threads)]

    def raw_onnx_one(self) -> Result:
        """The best raw single call: one instance, one image at a time, with one thread or with
        every core, whichever has the lower p50 (one request alone may use every core)."""
        calls = [self.raw(self.onnx_model, 1, threads, (1,))[0] for threads in sorted({1, self.cores})]
        return min(calls, key=lambda r: r.p50_ms)

    def served(self, label: str, sender: Sender, concurrency: int, server_pid: int | None = None) -> Result:
        return served(f"{label}, concurrency {concurrency}", sender, concurrency, self.seconds, server_pid)

    def cpu_line(self, section: str, r: Result, ceiling: Result) -> list[str]:
        """Where served row `r`'s CPU went, beside the core time per image of `ceiling` (all cores
        busy): the difference is what serving costs besides the model."""
        if r.cpu is None:
            return []
        per_image = self.cores * 1000 / ceiling.images_per_s if ceiling.images_per_s else float("nan")
        return [f"{section}: CPU per call of {r.label}: {r.cpu.describe()}; the ceiling takes"
                f" {per_image:.2f} ms of core time per image"]

    def repository_server(self, section: str, names: list[str], frontends: tuple[str, ...],
                          unbatched: tuple[str, ...] = ()) -> ContextManager[RunningServer]:
        """A server of just the named models of the repository (a context manager yielding its RunningServer)."""
        repo = link_repository(self.tmp / section, self.repo, names, unbatched)
        return self.server(section, ["--model-repository", str(repo)], frontends)

    def server(self, section: str, args: list[str], frontends: tuple[str, ...]) -> ContextManager[RunningServer]:
        return running_server(args, frontends, self.tmp / f"{section}-server.log")


def onnx_section(b: Bench) -> Table:
    model = b.model(b.onnx_model)
    raws = b.raw_onnx()
    top_raw = best(raws)
    table = Table(f"onnx: {model.name} over binary HTTP vs the best raw onnxruntime", [(r, top_raw) for r in raws])
    variants = ((model.name, "served binary HTTP, dynamic batching"),
                (f"{model.name}_no_batching", "served binary HTTP, no batching"))
    with b.repository_server("onnx", [model.name], ("http",), unbatched=(model.name,)) as server:
        port = server.ports["http"]
        senders = [(label, HTTPSender(port, v2_binary_request(dataclasses.replace(model, name=name), port)))
                   for name, label in variants]
        results = [b.served(label, sender, c, server.pid) for label, sender in senders for c in b.concurrencies]
    one = b.raw_onnx_one()
    table.rows += [(one, top_raw)] + [(r, top_raw) for r in results]
    top = best(results)
    table.summary.append(f"onnx: best {top.label}: {top.ratio(top_raw):.2f} of the best raw"
                         f" ({top.images_per_s:.1f} vs {top_raw.images_per_s:.1f} images/s)")
    table.summary += b.cpu_line("onnx", top, top_raw)
    firsts = [r for r in results if r.label.endswith(", concurrency 1")]
    if firsts:
        table.summary.append(f"onnx: added p50 at concurrency 1 over the best raw single call ({one.p50_ms:.2f} ms): "
                             + ", ".join(f"{r.label.split(', ')[1]} {r.p50_ms - one.p50_ms:+.2f} ms" for r in firsts))
    return table


def grpc_section(b: Bench) -> Table:
    model = b.model(b.onnx_model)
    top_raw, one = best(b.raw_onnx()), b.raw_onnx_one()
    table = Table(f"grpc: {model.name}, KServe v2 gRPC vs binary HTTP (dynamic batching as configured)",
                  [(top_raw, top_raw), (one, top_raw)])
    with b.repository_server("grpc", [model.name], ("http", "grpc")) as server:
        senders = {"gRPC": GRPCSender(server.ports["grpc"], v2_grpc_request(model)),
                   "binary HTTP": HTTPSender(server.ports["http"], v2_binary_request(model, server.ports["http"]))}
        results = {(protocol, c): b.served(f"served {protocol}", sender, c, server.pid)
                   for c in GRPC_CONCURRENCIES for protocol, sender in senders.items()}
    table.rows += [(r, top_raw) for r in results.values()]
    for c in GRPC_CONCURRENCIES:
        grpc, http = results["gRPC", c], results["binary HTTP", c]
        table.notes.append(f"concurrency {c}: gRPC gives {grpc.ratio(http):.2f} x the images/s of binary HTTP,"
                           f" p50 {grpc.p50_ms:.2f} vs {http.p50_ms:.2f} ms")
    first = results["gRPC", GRPC_CONCURRENCIES[0]]
    added = first.p50_ms - one.p50_ms
    table.summary.append(
        f"aim: gRPC p50 at concurrency {GRPC_CONCURRENCIES[0]} within {GRPC_AIM_MS:g} ms of raw:"
        f" {first.p50_ms:.2f} ms vs the best raw single call {one.p50_ms:.2f} ms, {added:+.2f} ms:"
        f" {verdict(added <= GRPC_AIM_MS)}"
    )
    table.summary += b.cpu_line("grpc", results["gRPC", GRPC_CONCURRENCIES[-1]], top_raw)
    return table


@dataclass
class _HandlerModel:
    """What a TorchServe handler reads of the core's Model. The names are placeholders: the
    in-process runner takes the one input array by position and gives back the first output."""

    max_batch_size: int
    config: mc.ModelConfig = field(default_factory=lambda: mc.ModelConfig(input=[mc.ModelInput(name="input")]))
    output_names: list[str] = field(default_factory=lambda: ["output"])


def _archive(b: Bench) -> tuple[Any, str]:
    """The archive's catalog (read and extracted as the server does) and its model name."""
    from triserve.repository.mar import MarCatalog

    catalog = MarCatalog(b.store)
    catalog.add_startup(b.archive)
    (name,) = catalog.registered()
    return catalog, name


def _archive_ceiling(b: Bench) -> tuple[str, str, Callable[[float], Result]]:
    """The archive's model name, and in-process: decode + its handler's pre/postprocessing + its
    model (its label, and what measures it for some seconds)."""
    from triserve.core import processors

    catalog, name = _archive(b)
    spec = catalog.read(name)
    version = catalog.default_version(name)
    assert version is not None
    handler = processors.build(spec.processors[version])
    count, threads = b.server_threads
    runners = open_runners(spec.config.platform, spec.versions[version] / spec.config.default_model_filename,
                           count, threads)
    view = _HandlerModel(spec.config.max_batch_size)
    rows = [{"body": b.jpeg}]  # what the TorchServe front end makes of a raw PUT body

    def pipeline(run: Runner) -> Callable[[], Any]:
        def once() -> Any:
            (x,) = handler.preprocess(view, rows).values()
            return handler.postprocess(view, {view.output_names[0]: run(x)})

        return once

    handler_name = catalog.registrations(name)[version].model["handler"]
    label = (f"in-process: JPEG decode + {handler_name} + {FRAMEWORKS[spec.config.platform]} {name},"
             f" {count} thread(s) x {threads}")
    calls = [pipeline(r) for r in runners]
    return name, label, lambda seconds: progress(measure_raw(label, calls, 1, seconds))


def torchserve_section(b: Bench) -> Table:
    """JPEG PUTs at concurrency 1 and 8 against the in-process ceiling, in interleaved rounds."""
    name, ceiling_label, ceiling = _archive_ceiling(b)
    args = ["--model-store", str(b.store), "--models", f"{name}={b.archive}"]
    with b.server("torchserve", args, ("torchserve_inference",)) as server:
        port = server.ports["torchserve_inference"]
        sender = HTTPSender(port, http_request("PUT", f"/predictions/{name}", port, b.jpeg))
        measures: dict[str, Callable[[float], Result]] = {ceiling_label: ceiling}
        for c in TORCHSERVE_AIMS:
            label = f"served PUT /predictions/{name}, concurrency {c}"
            measures[label] = functools.partial(served, label, sender, c, server_pid=server.pid)
        rounds = interleaved(measures, b.seconds)
    top = median_of(rounds[ceiling_label])
    served_rounds = [rounds[label] for label in measures if label != ceiling_label]
    table = Table(f"torchserve: {b.archive}, raw JPEG PUT /predictions/{name} vs the in-process ceiling",
                  [(median_of(rs), top) for rs in (rounds[ceiling_label], *served_rounds)])
    table.notes.append(_rounds_note(ROUNDS))
    ratios = {c: median_ratio(rs, rounds[ceiling_label]) for c, rs in zip(TORCHSERVE_AIMS, served_rounds)}
    aims = ", ".join(f"{aim:g} at {c}" for c, aim in TORCHSERVE_AIMS.items())
    table.summary.append(
        f"aim: TorchServe JPEG requests/s at least {aims} of in-process ({top.images_per_s:.1f}/s):"
        f" {', '.join(f'concurrency {c} {r:.2f}' for c, r in ratios.items())}:"
        f" {verdict(all(r >= TORCHSERVE_AIMS[c] for c, r in ratios.items()))}"
    )
    for rs in served_rounds[-1:]:  # the highest concurrency, where the cores are busy
        table.summary += b.cpu_line("torchserve", median_of(rs), top)
    return table


def _raw_rounds(b: Bench, model: BenchModel, count: int, threads: int) -> tuple[str, Callable[[float], Result]]:
    """Raw `model` at its better batch size (of b.raw's first measurement), to measure again in
    rounds: its label, and what measures it for some seconds."""
    raws = b.raw(model.name, count, threads)
    batch = RAW_BATCHES[raws.index(best(raws))]
    runners = open_runners(model.platform, model.model_file, count, threads)
    x = np.ascontiguousarray(np.repeat(model.sample[None], batch, axis=0))
    calls = [functools.partial(run, x) for run in runners]
    label = f"raw {model.framework} {model.name}, {count} instance(s) x {threads} thread(s), batch {batch}"
    return label, lambda seconds: progress(measure_raw(label, calls, batch, seconds))


def backends_section(b: Bench) -> Table:
    """Each backend's example over binary HTTP at concurrency 8 against its framework in-process,
    in interleaved rounds."""
    models = [b.model(name) for name in [b.onnx_model, *b.backend_models]]
    count, threads = b.server_threads
    measures: dict[str, Callable[[float], Result]] = {}
    pairs = []
    with b.repository_server("backends", [m.name for m in models], ("http",)) as server:
        for m in models:
            raw_label, measures[raw_label] = _raw_rounds(b, m, count, threads)
            label = f"served {m.framework} {m.name}, binary HTTP, concurrency {BACKENDS_CONCURRENCY}"
            measures[label] = functools.partial(served, label, HTTPSender(server.ports["http"], v2_binary_request(m, server.ports["http"])),
                                                BACKENDS_CONCURRENCY)
            pairs.append((raw_label, label))
        rounds = interleaved(measures, b.seconds)
    table = Table(f"backends: each example over binary HTTP at concurrency {BACKENDS_CONCURRENCY} vs its framework"
                  f" in-process ({count} instance(s) x {threads} thread(s), the better of batch"
                  f" {' and '.join(map(str, RAW_BATCHES))})")
    for raw_label, label in pairs:
        raw = median_of(rounds[raw_label])
        table.rows += [(raw, raw), (median_of(rounds[label]), raw)]
    table.notes.append(_rounds_note(ROUNDS))
    table.summary.append(f"served/raw per backend at concurrency {BACKENDS_CONCURRENCY}: " + ", ".join(
        f"{m.framework} {median_ratio(rounds[label], rounds[raw_label]):.2f}"
        for m, (raw_label, label) in zip(models, pairs)))
    return table


def drops(results: list[Result], limit: float = SWEEP_DROP) -> list[Result]:
    """The points of a concurrency sweep (in increasing concurrency) after the best one that
    lost more than `limit` of its throughput: a loss as load grows, not the ramp up to it."""
    if not results:
        return []
    top = results.index(best(results))
    return [r for r in results[top + 1:] if r.images_per_s < (1 - limit) * results[top].images_per_s]


def sweep_section(b: Bench) -> Table:
    """Binary HTTP at concurrency 1..32 for the model as configured (the default layout) and for
    one instance with every core's thread, each point a ratio to the best raw onnxruntime."""
    model = b.model(b.onnx_model)
    top_raw = best(b.raw_onnx())
    wide = f"{model.name}_1x{b.cores}"
    repo = link_repository(b.tmp / "sweep", b.repo, [model.name])

    def one_instance(config: mc.ModelConfig) -> None:
        config.ClearField("instance_group")
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
        config.parameters["intra_op_thread_count"].string_value = str(b.cores)

    derived_model(b.repo / model.name, repo / wide, one_instance)
    layouts = {model.name: "default layout", wide: f"1 instance x {b.cores} threads"}
    table = Table(f"sweep: {model.name} over binary HTTP, concurrency {','.join(map(str, SWEEP_CONCURRENCIES))},"
                  " vs the best raw onnxruntime", [(top_raw, top_raw)])
    with b.server("sweep", ["--model-repository", str(repo)], ("http",)) as server:
        port = server.ports["http"]
        measures: dict[tuple[str, int], Callable[[float], Result]] = {}
        for name, label in layouts.items():
            sender = HTTPSender(port, v2_binary_request(dataclasses.replace(model, name=name), port))
            for c in SWEEP_CONCURRENCIES:
                measures[name, c] = functools.partial(served, f"served {label}, concurrency {c}", sender, c)
        # a drift of the machine's speed during the sweep would read as a drop: every point in every round
        rounds = interleaved(measures, b.seconds)
    results = {name: [median_of(rounds[name, c]) for c in SWEEP_CONCURRENCIES] for name in layouts}
    table.notes.append(_rounds_note(ROUNDS))
    for name, label in layouts.items():
        table.rows += [(r, top_raw) for r in results[name]]
        top = best(results[name])
        lost = drops(results[name])
        table.notes.append(f"{label}: best {top.label.rsplit(', ', 1)[1]} ({top.images_per_s:.1f} images/s); "
                           + (", ".join(f"{r.label.rsplit(', ', 1)[1]} {r.ratio(top):.2f} of it" for r in lost)
                              if lost else f"no point after it below {1 - SWEEP_DROP:.2f} of it"))
        worst = min((r.ratio(top) for r in results[name][results[name].index(top):]), default=1.0)
        table.summary.append(
            f"aim: {label} loses at most {SWEEP_DROP:.0%} from its best point ({top.label.rsplit(', ', 1)[1]}):"
            f" lowest after it {worst:.2f}" + (f", DROP at {', '.join(r.label.rsplit(', ', 1)[1] for r in lost)}"
                                               if lost else "") + f": {verdict(not lost)}")
    return table


def _openvino_repository(b: Bench, model: BenchModel) -> tuple[Path, str]:
    """The ONNX model converted to OpenVINO IR (model.xml + model.bin, FP32 weights), served by
    `backend: "openvino"` with the ONNX model's config otherwise."""
    import openvino as ov

    name = f"{model.name}_openvino"
    repo = b.tmp / "openvino"

    def openvino(config: mc.ModelConfig) -> None:
        config.platform = ""
        config.backend = "openvino"
        config.default_model_filename = ""

    derived_model(b.repo / model.name, repo / name, openvino, link_versions=False)
    (repo / name / "1").mkdir()
    ov.save_model(ov.convert_model(str(model.model_file)), str(repo / name / "1" / "model.xml"), compress_to_fp16=False)
    return repo, name


def openvino_section(b: Bench) -> Table:
    """Raw OpenVINO and raw onnxruntime, then served OpenVINO at concurrency 1 and 8 against raw
    OpenVINO at its better batch size, in interleaved rounds."""
    model = b.model(b.onnx_model)
    repo, name = _openvino_repository(b, model)
    ov_model = b.model(name, repo)
    count, threads = b.server_threads
    raw_ort, raw_ov = best(b.raw(model.name, count, threads)), best(b.raw(name, count, threads))
    batch = RAW_BATCHES[b.raw(name, count, threads).index(raw_ov)]
    runners = open_runners(ov_model.platform, ov_model.model_file, count, threads)
    x = np.ascontiguousarray(np.repeat(ov_model.sample[None], batch, axis=0))
    calls = [functools.partial(run, x) for run in runners]
    raw_label = f"raw OpenVINO {name}, {count} instance(s) x {threads} thread(s), batch {batch}, in rounds"
    measures: dict[str, Callable[[float], Result]] = {
        raw_label: lambda seconds: progress(measure_raw(raw_label, calls, batch, seconds))}
    with b.server("openvino", ["--model-repository", str(repo)], ("http",)) as server:
        sender = HTTPSender(server.ports["http"], v2_binary_request(ov_model, server.ports["http"]))
        for c in OPENVINO_CONCURRENCIES:
            label = f"served OpenVINO, binary HTTP, concurrency {c}"
            measures[label] = functools.partial(served, label, sender, c, server_pid=server.pid)
        rounds = interleaved(measures, b.seconds)
    raws = rounds.pop(raw_label)
    top = median_of(raws)
    table = Table(f"openvino: {model.name} as OpenVINO IR, raw OpenVINO and raw onnxruntime ({count} instance(s) x"
                  f" {threads} thread(s), the better of batch {' and '.join(map(str, RAW_BATCHES))}) and served"
                  " OpenVINO over binary HTTP against raw OpenVINO in interleaved rounds",
                  [(raw_ov, raw_ov), (raw_ort, raw_ov), (top, top)] + [(median_of(rs), top) for rs in rounds.values()])
    table.notes.append(_rounds_note(ROUNDS) + " The first two rows are measured once, before the rounds.")
    table.summary.append(f"openvino: raw OpenVINO / raw onnxruntime: {raw_ov.ratio(raw_ort):.2f}"
                         f" ({raw_ov.images_per_s:.1f} vs {raw_ort.images_per_s:.1f} images/s)")
    ratios = {label.rsplit(", ", 1)[1]: median_ratio(rs, raws) for label, rs in rounds.items()}
    table.summary.append(
        f"aim: served OpenVINO at least {OPENVINO_AIM:g} of raw OpenVINO: "
        + ", ".join(f"{c} {r:.2f}" for c, r in ratios.items())
        + f": {verdict(max(ratios.values()) >= OPENVINO_AIM)}")
    for rs in list(rounds.values())[-1:]:  # the highest concurrency
        table.summary += b.cpu_line("openvino", median_of(rs), top)
    return table


def interleaved(measures: dict[Any, Callable[[float], Result]], seconds: float,
                rounds: int = ROUNDS) -> dict[Any, list[Result]]:
    """Each measurement `rounds` times for `seconds / rounds`, one of each per round, the order
    rotated every round: a swing in a shared machine's load then falls on every row alike."""
    labels = list(measures)
    results: dict[str, list[Result]] = {label: [] for label in labels}
    for i in range(rounds):
        shift = i % len(labels)
        for label in labels[shift:] + labels[:shift]:
            results[label].append(measures[label](seconds / rounds))
    return results


def _rounds_note(rounds: int) -> str:
    return (f"Each row is the median of {rounds} rounds of --seconds / {rounds}, measured in turn in a rotating"
            " order; the summary's ratios are medians of each round's ratio.")


_PROTOCOLS = {"http": "HTTP", "grpc": "gRPC"}
_BODY = {"http": "body (binary)", "grpc": "message"}


def shm_table(model: str, raw: list[Result], ours: list[Result], perf: dict[tuple[str, str], list[Result]]) -> Table:
    """The shm section's table from each measurement's rounds: perf_analyzer's by (protocol, shared
    memory "system" or "none"), beside the bench's own binary HTTP client, against raw onnxruntime."""
    top = median_of(raw)
    table = Table(f"shm: {model}, perf_analyzer with system shared memory vs tensors in the body, HTTP and gRPC,"
                  f" concurrency {SHM_CONCURRENCY}, vs raw onnxruntime on the server's layout",
                  [(median_of(rs), top) for rs in (raw, ours, *perf.values())])
    table.notes.append("perf_analyzer sends random data of the input's shape and type; with `--shared-memory"
                       " system` it registers POSIX shared-memory regions and passes inputs and outputs through"
                       " them (the server started with `--allow-client-shm true`), else binary tensors in the"
                       " HTTP body or the gRPC message. " + _rounds_note(len(raw)))
    pairs = {p: (perf[p, "system"], perf[p, "none"]) for p in _PROTOCOLS if (p, "system") in perf and (p, "none") in perf}
    table.summary.append(
        f"shm: perf_analyzer at concurrency {SHM_CONCURRENCY}, system shared memory / tensors in the body: "
        + ", ".join(f"{_PROTOCOLS[p]} {median_ratio(shm, body):.2f}" for p, (shm, body) in pairs.items())
        + f"; / raw onnxruntime ({top.images_per_s:.1f} images/s): "
        + ", ".join(f"{rs[0].label.rsplit(', ', 1)[0]} {median_ratio(rs, raw):.2f}" for rs in (ours, *perf.values())))
    return table


def shm_section(b: Bench) -> Table:
    """perf_analyzer over HTTP and gRPC, with `--shared-memory system` and without, at one
    concurrency, beside the bench's binary HTTP client, against raw onnxruntime with the server's
    instances and threads, all in interleaved rounds."""
    binary = find_perf_analyzer(b.perf_analyzer)  # missing: the section fails before measuring anything
    model = b.model(b.onnx_model)
    count, threads = b.server_threads
    x = np.ascontiguousarray(model.sample[None])
    calls = [functools.partial(run, x) for run in open_runners(model.platform, model.model_file, count, threads)]
    raw_label = f"raw {model.framework} {model.name}, {count} instance(s) x {threads} thread(s), batch 1"
    ours_label = f"served binary HTTP (bench client), concurrency {SHM_CONCURRENCY}"
    repo = link_repository(b.tmp / "shm", b.repo, [model.name])
    with b.server("shm", ["--model-repository", str(repo), "--allow-client-shm", "true"], ("http", "grpc")) as server:
        sender = HTTPSender(server.ports["http"], v2_binary_request(model, server.ports["http"]))

        def ours(seconds: float) -> Result:
            return served(ours_label, sender, SHM_CONCURRENCY, seconds)

        def run_perf(protocol: str, memory: str, label: str) -> Callable[[float], Result]:
            def measure(seconds: float) -> Result:
                return perf_analyzer(binary, label, model.name, protocol, f"{HOST}:{server.ports[protocol]}", SHM_CONCURRENCY,
                                     seconds, memory)
            return measure

        measures: dict[str, Callable[[float], Result]] = {
            ours_label: ours, raw_label: lambda seconds: progress(measure_raw(raw_label, calls, 1, seconds))}
        keys: dict[str, tuple[str, str]] = {}
        for protocol in _PROTOCOLS:
            for memory in ("none", "system"):
                how = "system shared memory" if memory == "system" else f"tensors in the {_BODY[protocol]}"
                label = f"perf_analyzer {_PROTOCOLS[protocol]}, {how}, concurrency {SHM_CONCURRENCY}"
                keys[label] = (protocol, memory)
                measures[label] = run_perf(protocol, memory, label)
        rounds = interleaved(measures, b.seconds)
    perf = {key: rounds[label] for label, key in keys.items()}
    return shm_table(model.name, rounds[raw_label], rounds[ours_label], perf)


def jpeg_pixels(data: bytes) -> np.ndarray:
    """What the example's Python `preprocess` model makes of one image (examples/export.py): decode,
    resize and crop as TorchServe's image_classifier, RGB 0..255, float32 [3, 224, 224]."""
    from triserve.vision.images import IMAGENET_MEAN, IMAGENET_STD, decode, imagenet_preprocess

    x = imagenet_preprocess(decode(data))
    return ((x * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]) * 255).astype(np.float32)


def _ensemble_onnx(b: Bench) -> tuple[mc.ModelConfig, BenchModel]:
    """The ensemble's config and its ONNX step (the model the in-process ceiling runs)."""
    from triserve.repository.triton import read_model

    if not (b.repo / ENSEMBLE_MODEL).is_dir():
        raise RuntimeError(f"no model '{ENSEMBLE_MODEL}' in {b.repo} (triserve export-examples writes it)")
    config = read_model(ENSEMBLE_MODEL, b.repo / ENSEMBLE_MODEL).config
    steps = [step.model_name for step in config.ensemble_scheduling.step]
    onnx = [name for name in steps if read_model(name, b.repo / name).config.platform == "onnxruntime_onnx"]
    if config.platform != "ensemble" or len(onnx) != 1:
        raise RuntimeError(f"model '{ENSEMBLE_MODEL}' is not an ensemble with one ONNX step (steps: {steps})")
    return config, b.model(onnx[0])


def _ensemble_ceiling(b: Bench, onnx: BenchModel) -> tuple[str, Callable[[float], Result]]:
    """In-process: decode + preprocess (triserve's vision code) + onnxruntime + top-k, on the
    server's threads: its label and what measures it for some seconds."""
    from triserve.vision.topk import top_indices

    count, threads = b.server_threads
    runners = open_runners(onnx.platform, onnx.model_file, count, threads)

    def pipeline(run: Runner) -> Callable[[], Any]:
        return lambda: top_indices(run(jpeg_pixels(b.jpeg)[None]), ENSEMBLE_TOP_K)

    label = f"in-process: JPEG decode + preprocess + {onnx.framework} {onnx.name}, {count} thread(s) x {threads}"
    calls = [pipeline(r) for r in runners]
    return label, lambda seconds: progress(measure_raw(label, calls, 1, seconds))


def ensemble_table(ceiling: list[Result], results: list[list[Result]]) -> Table:
    """The ensemble section's table from each measurement's rounds: every served JPEG path against
    the in-process ceiling."""
    top = median_of(ceiling)
    table = Table(f"ensemble: {ENSEMBLE_MODEL} (Python preprocess, then ONNX) and the TorchServe archive, a JPEG per"
                  f" request at concurrency {ENSEMBLE_CONCURRENCY}, vs in-process decode + ONNX",
                  [(median_of(rs), top) for rs in (ceiling, *results)])
    table.notes.append(f"v2 HTTP sends the JPEG as a binary BYTES tensor and asks for the top {ENSEMBLE_TOP_K}"
                       " (classification); the PUTs send it as the raw body (`curl -T`); the archive runs its"
                       " TorchScript model through image_classifier (its own ceiling is the torchserve section's). "
                       + _rounds_note(len(ceiling)))
    table.summary.append(f"ensemble at concurrency {ENSEMBLE_CONCURRENCY} / in-process decode + ONNX"
                         f" ({top.images_per_s:.1f} images/s): "
                         + ", ".join(f"{rs[0].label.rsplit(', ', 1)[0].removeprefix('served ')}"
                                     f" {median_ratio(rs, ceiling):.2f}" for rs in results))
    return table


def ensemble_section(b: Bench) -> Table:
    """The JPEG ensemble over v2 HTTP and TorchServe's `/predictions`, and the example archive's
    `/predictions`, at concurrency 8, against decode + ONNX in-process on the server's threads,
    in interleaved rounds."""
    config, onnx = _ensemble_onnx(b)
    _, archive = _archive(b)
    ceiling_label, ceiling = _ensemble_ceiling(b, onnx)
    steps = [step.model_name for step in config.ensemble_scheduling.step]
    repo = link_repository(b.tmp / "ensemble", b.repo, [ENSEMBLE_MODEL, *steps])
    args = ["--model-repository", str(repo), "--model-store", str(b.store), "--models", f"{archive}={b.archive}"]
    with b.server("ensemble", args, ("http", "torchserve_inference")) as server:
        http, ts = server.ports["http"], server.ports["torchserve_inference"]
        senders = {
            "served v2 HTTP BYTES": HTTPSender(http, v2_bytes_request(
                ENSEMBLE_MODEL, config.input[0].name, config.output[0].name, b.jpeg, http, ENSEMBLE_TOP_K)),
            f"served PUT /predictions/{ENSEMBLE_MODEL}": HTTPSender(
                ts, http_request("PUT", f"/predictions/{ENSEMBLE_MODEL}", ts, b.jpeg)),
            f"served PUT /predictions/{archive} (archive)": HTTPSender(
                ts, http_request("PUT", f"/predictions/{archive}", ts, b.jpeg)),
        }
        measures: dict[str, Callable[[float], Result]] = {ceiling_label: ceiling}
        for label, sender in senders.items():
            full = f"{label}, concurrency {ENSEMBLE_CONCURRENCY}"
            measures[full] = functools.partial(served, full, sender, ENSEMBLE_CONCURRENCY)
        rounds = interleaved(measures, b.seconds)
    return ensemble_table(rounds[ceiling_label], [rounds[label] for label in measures if label != ceiling_label])


SECTIONS: dict[str, Callable[[Bench], Table]] = {
    "onnx": onnx_section,
    "grpc": grpc_section,
    "torchserve": torchserve_section,
    "backends": backends_section,
    "sweep": sweep_section,
    "openvino": openvino_section,
    "shm": shm_section,
    "ensemble": ensemble_section,
    "ray": lambda b: __import__("triserve.bench.ray_section", fromlist=["ray_section"]).ray_section(b),  # imports Ray only when run
}
