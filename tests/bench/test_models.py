"""The benchmark's pre-built requests are what the server answers: the JPEG as a binary BYTES
tensor reaches the ensemble and comes back as its top classes (in-process, the real v2 app)."""

from __future__ import annotations

import httpx
import pytest
from tritonclient.utils import deserialize_bytes_tensor

from tests.conftest import jpeg_bytes
from tests.examples.test_export import _stand_in_classifier
from tests.inprocess import triton_dataplane
from triserve.bench.models import v2_bytes_request
from triserve.examples.export import ONNX_CONFIG, export_jpeg_ensemble
from triserve.protocols.kserve.rest import V2HTTP


def split_request(raw: bytes) -> tuple[str, str, dict[str, str], bytes]:
    head, body = raw.split(b"\r\n\r\n", 1)
    request_line, *lines = head.decode().split("\r\n")
    method, path, _ = request_line.split(" ")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body)
    return method, path, headers, body


def test_the_bytes_request_frames_the_file_as_tritonclient_reads_it():
    data = b"\xff\xd8 a jpeg"
    method, path, headers, body = split_request(v2_bytes_request("m", "image", "output", data, 8000, 5))
    assert (method, path) == ("POST", "/v2/models/m/infer")
    tensor = body[int(headers["Inference-Header-Content-Length"]):]
    assert deserialize_bytes_tensor(tensor).tolist() == [data]


@pytest.mark.anyio
async def test_the_ensemble_answers_the_benchs_jpeg_request_with_its_top_classes(tmp_path):
    repo = tmp_path / "model_repository"
    _stand_in_classifier(repo / "efficientnet_lite0_onnx" / "1" / "model.onnx")
    unlabelled = ONNX_CONFIG.replace('    label_filename: "labels.txt"\n', "")  # the stand-in has no labels.txt
    (repo / "efficientnet_lite0_onnx" / "config.pbtxt").write_text(unlabelled)
    export_jpeg_ensemble(repo)
    _, path, headers, body = split_request(
        v2_bytes_request("efficientnet_lite0_jpeg", "image", "output", jpeg_bytes("chelsea"), 8000, 5))
    async with triton_dataplane(repo) as dataplane:
        transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            r = await client.post(path, content=body, headers={
                "Inference-Header-Content-Length": headers["Inference-Header-Content-Length"]})
    assert r.status_code == 200, r.text
    length = int(r.headers["Inference-Header-Content-Length"])
    (output,) = httpx.Response(200, content=r.content[:length]).json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("output", "BYTES", [1, 5])
    top = deserialize_bytes_tensor(r.content[length:])
    assert len(top) == 5 and top[0].decode().split(":")[1:] == ["999", "toilet tissue"]  # the stand-in's best class
