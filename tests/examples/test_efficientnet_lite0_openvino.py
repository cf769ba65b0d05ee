"""examples/efficientnet_lite0_openvino.py: the example's OpenVINO copy (on a stand-in ONNX model of
the same shape; the real export runs in `export-examples`), served as the ONNX one answers."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.examples.test_export import _stand_in_classifier
from tests.inprocess import triton_dataplane
from triserve.examples.efficientnet_lite0_openvino import OPENVINO_NAME, export_openvino, openvino_config
from triserve.examples.export import ONNX_CONFIG
from triserve.protocols.kserve.rest import V2HTTP


@pytest.mark.anyio
async def test_the_openvino_copy_serves_what_the_onnx_model_answers(tmp_path):
    repo = tmp_path / "model_repository"
    onnx_file = repo / "efficientnet_lite0_onnx" / "1" / "model.onnx"
    _stand_in_classifier(onnx_file)
    (repo / "efficientnet_lite0_onnx" / "config.pbtxt").write_text(ONNX_CONFIG.replace('    label_filename: "labels.txt"\n', ""))
    diff = export_openvino(onnx_file, repo / OPENVINO_NAME / "1" / "model.xml")
    assert diff <= 1e-3 and (repo / OPENVINO_NAME / "1" / "model.bin").is_file()
    (repo / OPENVINO_NAME / "config.pbtxt").write_text(
        openvino_config(ONNX_CONFIG).replace('    label_filename: "labels.txt"\n', ""))
    x = np.random.default_rng(1).uniform(0, 255, (1, 3, 224, 224)).astype(np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": x.ravel().tolist()}]}
    async with triton_dataplane(repo) as dataplane:
        transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            config = (await client.get(f"/v2/models/{OPENVINO_NAME}/config")).json()
            by_ov = (await client.post(f"/v2/models/{OPENVINO_NAME}/infer", json=body)).json()["outputs"][0]
            by_ort = (await client.post("/v2/models/efficientnet_lite0_onnx/infer", json=body)).json()["outputs"][0]
    assert config["backend"] == "openvino" and config["max_batch_size"] == 8 and "dynamic_batching" in config
    assert by_ov["shape"] == by_ort["shape"] == [1, 1000]
    np.testing.assert_allclose(by_ov["data"], by_ort["data"], rtol=1e-5, atol=1e-4)
