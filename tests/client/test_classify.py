"""`triserve classify` prints Triton image_client-style lines, as the blog shows them; it finds the
image layout and labels of auto-completed models, and says when a model is not an image classifier."""

from __future__ import annotations

import argparse
import ast
import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from tests.conftest import CAT_CLASSES, ESPRESSO, free_port, photo
from tests.inprocess import _save, tiny_repository
from triserve.cli import parser
from triserve.client.classify import NotAnImageClassifier, classify_main, model_input_spec
from triserve.options import FRONTENDS, ServerOptions
from triserve.server import Server

COLOURS = ["red", "green", "blue", "dark"]


def colour_onnx(path: Path, layout: str) -> None:
    """A tiny image classifier, FP32 pixels [batch, 3, 8, 8] (or [batch, 8, 8, 3]) -> 4 scores:
    the mean of each channel (red, green, blue) and minus their sum (dark). No config.pbtxt."""
    shape, axes = (["batch", 3, 8, 8], [2, 3]) if layout == "NCHW" else (["batch", 8, 8, 3], [1, 2])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], [1, 0, 0, -1, 0, 1, 0, -1, 0, 0, 1, -1])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["means"], axes=axes, keepdims=0),
         helper.make_node("MatMul", ["means", "w"], ["scores"])],
        "colour",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weights],
    )
    _save(graph, path)


@pytest.fixture
def repository(tmp_path) -> Path:
    repo = tiny_repository(tmp_path / "repo")
    for name, layout in (("colour_chw", "NCHW"), ("colour_hwc", "NHWC")):
        colour_onnx(repo / name / "1" / "model.onnx", layout)
        (repo / name / "labels.txt").write_text("\n".join(COLOURS) + "\n")
    return repo


def image(tmp_path: Path, rgb: tuple[int, int, int]) -> str:
    path = tmp_path / f"{'_'.join(map(str, rgb))}.png"
    Image.new("RGB", (20, 16), rgb).save(path)
    return str(path)


async def run_classify(repo: Path, *args: str) -> tuple[int, str, str]:
    """`triserve classify ARGS` (on a worker thread) against a server of `repo` in this event loop."""
    port = free_port()
    server = Server(ServerOptions(model_repositories=(repo,),
                                  ports={name: port if name == "http" else 0 for name in FRONTENDS}))
    running = asyncio.create_task(server.run())
    try:
        async with asyncio.timeout(120), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while True:  # the deadline only bounds a hang
                assert not running.done(), running.result()
                try:
                    if (await client.get("/v2/health/ready")).status_code == 200:
                        break
                except httpx.ConnectError:
                    pass
                await asyncio.sleep(0.05)
        namespace = parser().parse_args(["classify", "-u", f"127.0.0.1:{port}", *args])
        return await asyncio.to_thread(captured, namespace)
    finally:
        server.stop()
        await running


def captured(namespace: argparse.Namespace) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = classify_main(namespace)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["colour_chw", "colour_hwc"])
async def test_an_auto_completed_model_gets_its_layout_from_its_dims_and_labels_from_labels_txt(
        repository, tmp_path, model):
    code, out, err = await run_classify(repository, image(tmp_path, (200, 10, 30)), image(tmp_path, (5, 5, 250)),
                                        "-m", model, "-c", "2", "-b", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].endswith("200_10_30.png:") and lines[3].endswith("5_5_250.png:")
    assert ast.literal_eval(lines[1]) == ["200.000000", "0", "red"]
    assert ast.literal_eval(lines[2]) == ["30.000000", "2", "blue"]
    assert ast.literal_eval(lines[4]) == ["250.000000", "2", "blue"]


@pytest.mark.anyio
@pytest.mark.parametrize("model, why", [
    ("simple", "it has 2 input(s) and 2 output(s)"),
    ("doubler", "its input 'x' has 1 dimension(s) [3]"),
])
async def test_a_model_that_is_not_an_image_classifier_is_named_as_such(repository, tmp_path, model, why):
    code, out, err = await run_classify(repository, image(tmp_path, (1, 2, 3)), "-m", model)
    assert code == 1 and out == ""
    assert f"triserve classify: model '{model}' is not an image classifier: {why}" in err
    assert "one image input ([C,H,W] or [H,W,C], C 1 or 3) and one FP32 output" in err


def metadata(shape: list[int], output: str = "FP32") -> dict:
    return {"name": "m", "inputs": [{"name": "in", "datatype": "FP32", "shape": shape}],
            "outputs": [{"name": "out", "datatype": output, "shape": [-1, 10]}]}


@pytest.mark.parametrize("shape, layout", [([-1, 3, 224, 224], "NCHW"), ([-1, 224, 224, 3], "NHWC"),
                                           ([-1, 1, 28, 28], "NCHW"), ([-1, 3, 5, 3], "NCHW")])
def test_format_none_reads_the_channels_position_from_the_dims(shape, layout):
    spec = model_input_spec(metadata(shape), {"max_batch_size": 8, "input": [{"format": "FORMAT_NONE"}]})
    assert spec[3] == layout and spec[-1] == 8


@pytest.mark.parametrize("shape, output, why", [
    ([-1, 224, 224, 224], "FP32", "dims [224, 224, 224] have 1 or 3 channels neither first (CHW) nor last (HWC)"),
    ([-1, 3, -1, -1], "FP32", "takes images of variable size ([3, -1, -1])"),
    ([-1, 3, 224, 224], "INT64", "its output 'out' is INT64"),
])
def test_what_classify_cannot_run_is_explained(shape, output, why):
    with pytest.raises(NotAnImageClassifier) as e:
        model_input_spec(metadata(shape, output), {"max_batch_size": 8, "input": [{}]})
    assert why in str(e.value)


# Slow tier: the classify command against a server of the example models.


def classify(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "triserve", "classify", "-u", server.url, *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.slow
def test_classify_prints_blog_lines(example_server, example_repo):
    image = example_repo.parent / "images" / "kitten.jpg"  # the photo export-examples ships
    assert np.array_equal(np.asarray(Image.open(image)).shape, photo("chelsea").size[::-1] + (3,))
    result = classify(example_server, str(image), "-m", "efficientnet_lite0_onnx")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    value, index, label = ast.literal_eval(lines[0])
    assert int(index) in CAT_CLASSES and label.endswith("cat") or label == "tabby"
    assert 0 < float(value) <= 1 and len(value) == 8  # '0.xxxxxx'


@pytest.mark.slow
def test_classify_a_folder_in_batches(example_server, tmp_path):
    photo("chelsea").save(tmp_path / "a_chelsea.png")
    photo("coffee").save(tmp_path / "b_coffee.jpg")
    result = classify(example_server, str(tmp_path), "-m", "efficientnet_lite0_onnx", "-b", "2", "-c", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("a_chelsea.png:") and lines[2].endswith("b_coffee.jpg:")
    assert int(ast.literal_eval(lines[1])[1]) in CAT_CLASSES
    assert ast.literal_eval(lines[3])[1:] == [str(ESPRESSO), "espresso"]


@pytest.mark.slow
def test_classify_unknown_model_is_a_clear_error(example_server, tmp_path):
    image = tmp_path / "x.jpg"
    photo("coffee").save(image)
    result = classify(example_server, str(image), "-m", "nope")
    assert result.returncode == 1
    assert "unknown model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_classify_a_torchserve_archive_over_v2_with_its_handlers_preprocessing_and_labels(start_server, example_repo):
    store = example_repo.parent / "model_store"
    server = start_server("--model-store", store, "--models", "efficientnet_lite0.mar")
    result = classify(server, str(example_repo.parent / "images" / "kitten.jpg"), "-m", "efficientnet_lite0")
    assert result.returncode == 0, result.stderr
    assert "TorchServe image_classifier archive" in result.stderr
    value, index, label = ast.literal_eval(result.stdout.splitlines()[0])
    assert int(index) in CAT_CLASSES and label in ("tabby", "tiger cat", "Egyptian cat")
    assert 0.3 < float(value) <= 1  # a softmax probability, not a logit


SIZE_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            files = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            scores = np.array([[0.0, float(len(f)), 0.5] for f in files], dtype=np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("scores", scores)]))
        return out
'''


@pytest.mark.anyio
async def test_server_side_sends_each_file_as_it_is_to_a_model_with_one_bytes_input(tmp_path):
    repo = tmp_path / "repo"
    (repo / "sizes" / "1").mkdir(parents=True)
    (repo / "sizes" / "1" / "model.py").write_text(SIZE_MODEL)
    (repo / "sizes" / "labels.txt").write_text("zero\nsize\nhalf\n")
    (repo / "sizes" / "config.pbtxt").write_text(
        'backend: "python" max_batch_size: 4 instance_group [{ kind: KIND_CPU count: 1 }]'
        ' input [{ name: "image" data_type: TYPE_STRING dims: [ 1 ] }]'
        ' output [{ name: "scores" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" }]')
    photo = image(tmp_path, (200, 10, 10))
    code, out, err = await run_classify(repo, "--server-side", "-m", "sizes", "-c", "2", photo)
    assert code == 0, err
    size = Path(photo).stat().st_size  # the bytes of the file, not decoded pixels
    assert out.splitlines() == [str([f"{float(size):f}", "1", "size"]), str(["0.500000", "2", "half"])]
