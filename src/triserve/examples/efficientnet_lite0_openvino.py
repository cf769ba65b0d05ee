"""The ONNX EfficientNet-Lite0 example as OpenVINO IR, for Triton's `backend: "openvino"`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPENVINO_NAME = "efficientnet_lite0_openvino"


def openvino_config(onnx_config: str) -> str:
    """The ONNX example's config (inputs, outputs, batching, labels) with the OpenVINO backend."""
    return (onnx_config.replace('name: "efficientnet_lite0_onnx"', f'name: "{OPENVINO_NAME}"')
            .replace('platform: "onnxruntime_onnx"', 'backend: "openvino"'))


def export_openvino(onnx_file: Path, xml_file: Path, atol: float = 1e-4, rtol: float = 1e-5) -> float:
    """`onnx_file` converted to IR (`xml_file` and its .bin, FP32 weights: no FP16 compression),
    checked against onnxruntime on a random batch; returns the max abs difference (raises past
    `atol` + `rtol` x the largest output)."""
    import onnxruntime as ort
    import openvino as ov

    xml_file.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_file)), str(xml_file), compress_to_fp16=False)
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 224, 224)).astype(np.float32)
    expected = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    compiled = ov.Core().compile_model(str(xml_file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled.create_infer_request().infer({0: x})[0]
    diff = float(np.abs(got - expected).max())
    limit = atol + rtol * float(np.abs(expected).max())
    if diff > limit:
        raise RuntimeError(f"the OpenVINO export differs from onnxruntime by {diff:.3g} (more than {limit:.3g})")
    return diff
