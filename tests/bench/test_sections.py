"""The benchmark's sweep verdict, its OpenVINO copy of the ONNX model, the shm and ensemble tables
and what those sections need (tiny models, no servers)."""

from __future__ import annotations

import types

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.backends.test_openvino import dense_onnx
from tests.bench.test_results import bench_args
from triserve.bench import bench_main, sections
from triserve.bench.models import BenchModel
from triserve.bench.raw import open_runners
from triserve.bench.results import Result


def _sweep(*images_per_s: float) -> list[Result]:
    return [Result(f"served, concurrency {c}", v, 1.0, 2.0) for c, v in zip(sections.SWEEP_CONCURRENCIES, images_per_s)]


def test_a_drop_after_the_best_point_is_flagged_and_the_ramp_up_is_not():
    ramp_then_flat = _sweep(30, 50, 60, 58, 57, 55)  # 55 is 0.92 of 60: within 10%
    assert sections.drops(ramp_then_flat) == []
    falling = _sweep(45, 44, 42, 41, 36, 34)  # as the 1x2 layout: 45.6 at 1, 34.5 at 16
    assert [r.label for r in sections.drops(falling)] == ["served, concurrency 16", "served, concurrency 32"]
    dip = _sweep(30, 60, 50, 61, 60, 59)
    assert [r.label for r in sections.drops(dip)] == []  # a dip before the best point is the ramp
    assert sections.drops([]) == []


def test_the_openvino_copy_is_ir_served_by_the_openvino_backend_and_answers_as_onnxruntime(tmp_path):
    repo = tmp_path / "model_repository"
    dense_onnx(repo / "dense" / "1" / "model.onnx")
    (repo / "dense" / "config.pbtxt").write_text(
        'name: "dense"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 8 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\ndynamic_batching { }\n')
    (repo / "dense" / "labels.txt").write_text("a\nb\nc\nd\n")
    bench = types.SimpleNamespace(repo=repo, tmp=tmp_path / "run")
    model = BenchModel("dense", "onnxruntime_onnx", repo / "dense" / "1" / "model.onnx", "x", "y", "FP32",
                       np.zeros(8, np.float32))
    out, name = sections._openvino_repository(bench, model)
    folder = out / name
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (config.name, config.backend, config.platform) == ("dense_openvino", "openvino", "")
    assert config.HasField("dynamic_batching") and config.max_batch_size == 4
    assert (folder / "1" / "model.xml").is_file() and (folder / "1" / "model.bin").is_file()
    assert (folder / "labels.txt").resolve() == (repo / "dense" / "labels.txt").resolve()
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    (by_ov,) = open_runners("openvino", folder / "1" / "model.xml", 1, 1)
    (by_ort,) = open_runners("onnxruntime_onnx", model.model_file, 1, 1)
    np.testing.assert_allclose(by_ov(x), by_ort(x), rtol=1e-5, atol=1e-6)


def _rounds(label: str, *images_per_s: float) -> list[Result]:
    return [Result(label, v, 100.0 + i, 200.0 + i) for i, v in enumerate(images_per_s)]


def test_interleaved_rounds_measure_each_in_turn_in_a_rotating_order():
    calls: list[tuple[str, float]] = []

    def measure(label: str):
        def run(seconds: float) -> Result:
            calls.append((label, seconds))
            return Result(label, float(len(calls)), 1.0, 2.0)
        return run

    rounds = sections.interleaved({name: measure(name) for name in "abc"}, 3.0, rounds=3)
    assert [name for name, _ in calls] == list("abcbcacab") and {s for _, s in calls} == {1.0}
    assert {name: [r.images_per_s for r in rs] for name, rs in rounds.items()} == {
        "a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}


def test_the_shm_table_shows_shared_memory_beside_the_body_as_ratios_to_raw():
    raw = _rounds("raw onnxruntime m, 2 instance(s) x 1 thread(s), batch 1", 50.0, 25.0, 50.0)
    ours = _rounds("served binary HTTP (bench client), concurrency 8", 45.0, 20.0, 40.0)
    perf = {(p, m): _rounds(f"perf_analyzer {p}, {m}, concurrency 8", *rates) for (p, m), rates in {
        ("http", "none"): (40.0, 20.0, 40.0), ("http", "system"): (44.0, 22.0, 48.0),
        ("grpc", "none"): (42.0, 10.0, 50.0), ("grpc", "system"): (37.8, 9.0, 45.0)}.items()}
    table = sections.shm_table("m", raw, ours, perf)
    # rows: the median of each measurement's rounds, divided by raw's median (50 images/s)
    assert [(r.label, r.images_per_s, r.p50_ms, round(r.ratio(base), 3)) for r, base in table.rows] == [
        (raw[0].label, 50.0, 101.0, 1.0), (ours[0].label, 40.0, 101.0, 0.8),
        ("perf_analyzer http, none, concurrency 8", 40.0, 101.0, 0.8),
        ("perf_analyzer http, system, concurrency 8", 44.0, 101.0, 0.88),
        ("perf_analyzer grpc, none, concurrency 8", 42.0, 101.0, 0.84),
        ("perf_analyzer grpc, system, concurrency 8", 37.8, 101.0, 0.756)]
    (summary,) = table.summary  # medians of each round's ratio: shm/body per round 1.1, 1.1, 1.2 and 0.9, 0.9, 0.9
    assert summary.startswith("shm: perf_analyzer at concurrency 8, system shared memory / tensors in the body:"
                              " HTTP 1.10, gRPC 0.90; / raw onnxruntime (50.0 images/s):"
                              " served binary HTTP (bench client) 0.80, perf_analyzer http, none 0.80")
    assert "--allow-client-shm true" in table.render() and "median of 3 rounds" in table.render()


def test_a_missing_perf_analyzer_fails_the_shm_section_before_it_measures(tmp_path, capsys):
    missing = tmp_path / "no" / "perf_analyzer"
    args = bench_args(tmp_path, "shm")
    args.perf_analyzer = str(missing)
    assert bench_main(args) == 1
    out = capsys.readouterr().out
    assert f"## shm: failed: perf_analyzer not found: {missing} is not an executable file; no shared-memory" \
           " figures were measured" in out
    assert "| perf_analyzer" not in out and "images/s" not in out.split("## summary")[1]
    assert "- shm: failed" in out.split("## summary")[1]


def test_the_ensemble_table_divides_each_jpeg_path_by_the_in_process_ceiling():
    ceiling = _rounds("in-process: JPEG decode + preprocess + onnxruntime m, 2 thread(s) x 1", 60.0, 30.0, 60.0)
    served = [_rounds("served v2 HTTP BYTES, concurrency 8", 51.0, 25.5, 51.0),
              _rounds("served PUT /predictions/efficientnet_lite0_jpeg, concurrency 8", 45.0, 22.5, 45.0),
              _rounds("served PUT /predictions/efficientnet_lite0 (archive), concurrency 8", 30.0, 15.0, 30.0)]
    table = sections.ensemble_table(ceiling, served)
    assert [round(r.ratio(base), 2) for r, base in table.rows] == [1.0, 0.85, 0.75, 0.5]
    assert table.summary == [
        "ensemble at concurrency 8 / in-process decode + ONNX (60.0 images/s): v2 HTTP BYTES 0.85,"
        " PUT /predictions/efficientnet_lite0_jpeg 0.75, PUT /predictions/efficientnet_lite0 (archive) 0.50"]


def test_the_ensemble_section_needs_the_jpeg_ensemble_and_finds_its_onnx_step(tmp_path):
    from tests.examples.test_export import _stand_in_classifier
    from triserve.examples.export import ONNX_CONFIG, export_jpeg_ensemble

    bench = sections.Bench(bench_args(tmp_path, "ensemble"), tmp_path / "run")
    with pytest.raises(RuntimeError, match="no model 'efficientnet_lite0_jpeg' in .*triserve export-examples writes it"):
        sections._ensemble_onnx(bench)
    repo = tmp_path / "model_repository"
    _stand_in_classifier(repo / "efficientnet_lite0_onnx" / "1" / "model.onnx")
    (repo / "efficientnet_lite0_onnx" / "config.pbtxt").write_text(ONNX_CONFIG)
    export_jpeg_ensemble(repo)
    config, onnx = sections._ensemble_onnx(bench)
    assert config.name == "efficientnet_lite0_jpeg" and (config.input[0].name, config.output[0].name) == ("image", "output")
    assert (onnx.name, onnx.framework) == ("efficientnet_lite0_onnx", "onnxruntime")


def test_the_ceiling_prepares_the_image_as_the_examples_preprocess_model_does(tmp_path, monkeypatch):
    """The in-process ceiling does the work of the ensemble's Python step: its model.py, imported
    here with the backend's utilities, gives the same pixels."""
    import importlib.util
    import sys

    from tests.conftest import jpeg_bytes
    from triserve.backends.python import triton_python_backend_utils
    from triserve.examples.export import export_jpeg_ensemble

    export_jpeg_ensemble(tmp_path)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", triton_python_backend_utils)
    spec = importlib.util.spec_from_file_location("preprocess_model", tmp_path / "preprocess" / "1" / "model.py")
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    image = jpeg_bytes("chelsea")
    ours = sections.jpeg_pixels(image)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, model.pixels(image))
