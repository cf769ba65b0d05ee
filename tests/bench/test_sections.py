"""The benchmark's sweep verdict and its OpenVINO copy of the ONNX model (tiny models, no servers)."""

from __future__ import annotations

import types

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.backends.test_openvino import dense_onnx
from triserve.bench import sections
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
