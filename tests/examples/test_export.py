"""`export-examples`: its progress lines, and the photo it ships (the models are tested by the
modules beside this one, on the real export)."""

from __future__ import annotations

import json
import logging

import numpy as np
from PIL import Image

from tests.conftest import photo
from triserve.examples.export import PHOTO, Steps, export_photo


def test_the_photo_is_scikit_images_chelsea_as_a_jpeg(tmp_path):
    path = export_photo(tmp_path)
    assert path == tmp_path / "images" / "kitten.jpg" and PHOTO.as_posix() == "images/kitten.jpg"
    with Image.open(path) as image:
        assert image.format == "JPEG"
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    expected = np.asarray(photo("chelsea"), dtype=np.float32)
    assert pixels.shape == expected.shape and np.abs(pixels - expected).mean() < 3  # JPEG quality 95


def test_each_step_is_numbered_when_it_starts_and_timed_when_it_ends(caplog):
    caplog.set_level(logging.INFO, logger="triserve")
    steps = Steps(2)
    with steps.step("first"):
        assert caplog.messages == ["[1/2] first ..."]  # said before the work, not after
    with steps.step("second"):
        pass
    assert caplog.messages[0::2] == ["[1/2] first ...", "[2/2] second ..."]
    for message, prefix in zip(caplog.messages[1::2], ("[1/2]", "[2/2]")):
        head, _, seconds = message.partition(" done in ")
        assert head == prefix and seconds.endswith(" s") and float(seconds[:-2]) >= 0


def _stand_in_classifier(path) -> None:
    """An ONNX model shaped like efficientnet_lite0_onnx (input [N, 3, 224, 224] -> output [N, 1000]):
    the mean of each colour channel times a fixed [3, 1000] matrix."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(3000, dtype=np.float32).reshape(3, 1000) / 3000, "W")
    axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["means"], keepdims=0),
         helper.make_node("MatMul", ["means", "W"], ["output"])],
        "stand_in",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1000])],
        [weights, axes],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)


def test_the_jpeg_ensemble_decodes_on_the_server_what_the_client_would_prepare(tmp_path):
    """efficientnet_lite0_jpeg: the encoded image in (v2 BYTES, or a raw /predictions body), the
    ONNX model's output out; its Python preprocess uses the TorchServe handler's resize and crop."""
    import anyio
    import httpx

    from tests.conftest import jpeg_bytes
    from tests.inprocess import triton_dataplane
    from triserve.examples.export import ONNX_CONFIG, export_jpeg_ensemble
    from triserve.protocols.kserve.rest import V2HTTP
    from triserve.vision.images import IMAGENET_MEAN, IMAGENET_STD, decode, imagenet_preprocess

    repo = tmp_path / "model_repository"
    _stand_in_classifier(repo / "efficientnet_lite0_onnx" / "1" / "model.onnx")
    (repo / "efficientnet_lite0_onnx" / "config.pbtxt").write_text(ONNX_CONFIG.replace("dynamic_batching { }", "").replace(
        '    label_filename: "labels.txt"\n', ""))
    export_jpeg_ensemble(repo)
    image = jpeg_bytes("chelsea")
    x = imagenet_preprocess(decode(image))
    pixels = (x * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]) * 255
    expected = pixels.mean(axis=(1, 2)) @ (np.arange(3000, dtype=np.float32).reshape(3, 1000) / 3000)

    async def main() -> None:
        async with triton_dataplane(repo) as dataplane:
            assert dataplane.status("efficientnet_lite0_jpeg").state == "READY", dataplane.status("efficientnet_lite0_jpeg")
            transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                body = {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": len(image) + 4}}],
                        "outputs": [{"name": "output", "parameters": {"classification": 2}}]}
                header = json.dumps(body).encode()
                r = await client.post("/v2/models/efficientnet_lite0_jpeg/infer", content=header + len(image).to_bytes(4, "little") + image,
                                      headers={"Inference-Header-Content-Length": str(len(header))})
                assert r.status_code == 200, r.text
                top = r.json()["outputs"][0]["data"]
                assert top[0].split(":")[1:] == ["999", "toilet tissue"]  # the ensemble's own labels.txt: ImageNet's
                assert abs(float(top[0].split(":")[0]) - expected[999]) < 1e-3 * abs(expected[999])
                r = await client.post("/v2/models/efficientnet_lite0_jpeg/infer", json={"inputs": [
                    {"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": ["not an image"]}]})
                assert r.status_code == 400 and "not a decodable image" in r.json()["error"]
            # TorchServe's /predictions: the raw body is the BYTES input
            replies = await dataplane.predict(dataplane.model("efficientnet_lite0_jpeg"), [{"body": image}])
            np.testing.assert_allclose(np.array(replies[0].value["output"]), expected, rtol=1e-4)

    anyio.run(main)
