"""The TorchServe APIs of a real `triserve serve`, with archives made by the real torch-model-archiver,
asked with curl, httpx and tritonclient over real sockets."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from PIL import Image

from tests.conftest import CAT_CLASSES, ESPRESSO, jpeg_bytes, photo
from tests.torchserve_archives import (
    escape_to,
    index_to_name,
    manifest,
    marker_handler,
    torch_model_archiver,
    zip_archive,
)
from triserve.examples.model_store import index_to_name as imagenet_labels
from triserve.core.processors.image_classifier import softmax
from triserve.vision.images import decode, imagenet_preprocess

pytestmark = pytest.mark.slow  # starts `triserve serve` subprocesses

LABELS = {i: names[-1] for i, names in ((int(k), v) for k, v in imagenet_labels().items())}
CATS = {LABELS[i] for i in CAT_CLASSES}

DOUBLER_HANDLER = """
import torch
from ts.torch_handler.base_handler import BaseHandler


class Doubler(BaseHandler):
    def preprocess(self, data):
        return torch.tensor([row.get("data") or row.get("body") for row in data], dtype=torch.float32)

    def postprocess(self, data):
        return [{"doubled": row, "batch": self.context.system_properties["batch_size"]} for row in data.tolist()]
"""


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Models, labels and archives; `store` is the model store."""
    from triserve.examples import efficientnet_lite0 as enl

    tmp = tmp_path_factory.mktemp("torchserve")
    inputs = tmp / "inputs"
    inputs.mkdir()
    enl.export_torchscript(inputs / "model.pt", normalization="imagenet", softmax=False)
    enl.export_onnx(inputs / "model.onnx", normalization="imagenet", softmax=False)
    labels = index_to_name(inputs / "index_to_name.json")
    store = tmp / "store"
    # The acceptance archive: real torch-model-archiver, TorchScript, built-in image_classifier.
    torch_model_archiver(store, "effnet", "1.0", "image_classifier", serialized=inputs / "model.pt", extra=[labels])
    # A second archive, ONNX, written by `triserve archive`.
    subprocess.run([sys.executable, "-m", "triserve", "archive", "--model-name", "effnet_onnx", "--version", "2.0",
                    "--serialized-file", str(inputs / "model.onnx"), "--handler", "image_classifier",
                    "--extra-files", str(labels), "--export-path", str(store)], check=True, capture_output=True)
    torch_model_archiver(store, "effnet_tgz", "1.0", "image_classifier", serialized=inputs / "model.onnx",
                         extra=[labels], fmt="tgz")
    # Two versions of one model, the second with another serialized file name.
    (inputs / "v2").mkdir()
    (inputs / "v2" / "other.onnx").write_bytes((inputs / "model.onnx").read_bytes())
    for version, model_file in (("1.0", inputs / "model.onnx"), ("2.0", inputs / "v2" / "other.onnx")):
        torch_model_archiver(tmp / "versions" / version, "multi", version, "image_classifier", serialized=model_file)
        (tmp / "versions" / version / "multi.mar").rename(store / f"multi_{version}.mar")
    # Custom handlers: one that leaves a marker when imported, one doubling through TorchScript.
    marker = tmp / "evil_executed"
    evil = marker_handler(inputs / "evil_handler.py", marker, "def handle(data, context):\n    return data\n")
    torch_model_archiver(store, "evil", "1.0", str(evil), serialized=inputs / "model.pt")
    torch.jit.script(Double()).save(str(inputs / "double.pt"))
    doubler_marker = tmp / "doubler_executed"
    doubler = marker_handler(inputs / "doubler.py", doubler_marker, DOUBLER_HANDLER)
    torch_model_archiver(store, "doubler", "1.0", str(doubler), serialized=inputs / "double.pt")
    victim = tmp / "victim.txt"
    zip_archive(store / "slip.mar", {"MAR-INF/MANIFEST.json": manifest("slip", serializedFile="model.onnx"),
                                     "model.onnx": b"x", escape_to(victim): b"pwned"})
    # A Triton repository beside the archives: a tiny ONNX model, asked through /predictions.
    repo = tmp / "repo"
    (repo / "twice" / "1").mkdir(parents=True)
    _twice_onnx(repo / "twice" / "1" / "model.onnx")
    return {"store": store, "inputs": inputs, "marker": marker, "doubler_marker": doubler_marker,
            "victim": victim, "repo": repo}


def _twice_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "twice", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


FRONTENDS = ("http", "torchserve_inference", "torchserve_management", "torchserve_metrics")


@pytest.fixture(scope="module")
def server(start_server, files):
    return start_server("--model-store", files["store"], "--models", "effnet=effnet.mar", "effnet_tgz.tar.gz",
                        "--model-repository", files["repo"], "--enable-model-api", frontends=FRONTENDS)


def url(server, api: str, path: str) -> str:
    return f"http://127.0.0.1:{server.ports['torchserve_' + api]}{path}"


def expected_top5(model_file: Path, image: Image.Image) -> dict[str, float]:
    """What TorchServe's image_classifier answers, computed in-process with torch."""
    module = torch.jit.load(str(model_file)).eval()
    with torch.no_grad():
        logits = module(torch.from_numpy(imagenet_preprocess(image))[None]).numpy()
    probs = softmax(logits)[0]
    top = np.argsort(-probs)[:5]
    return {LABELS[int(i)]: float(probs[i]) for i in top}


def check_top5(answer: dict[str, float], expected: dict[str, float]) -> None:
    assert list(answer) == list(expected)  # the same classes in the same (descending) order
    np.testing.assert_allclose(list(answer.values()), list(expected.values()), atol=1e-4)
    assert list(answer.values()) == sorted(answer.values(), reverse=True)


# -- inference API ---------------------------------------------------------------------------
def test_curl_upload_answers_top5_with_a_cat_first(server, files, tmp_path):
    image = tmp_path / "chelsea.jpg"
    image.write_bytes(jpeg_bytes("chelsea"))
    out = subprocess.run(["curl", "-s", "-S", url(server, "inference", "/predictions/effnet"), "-T", str(image)],
                         check=True, capture_output=True, text=True).stdout
    answer = json.loads(out)
    assert next(iter(answer)) in CATS
    assert len(answer) == 5
    assert out.startswith('{\n  "')  # indented JSON, as TorchServe writes it
    check_top5(answer, expected_top5(files["inputs"] / "model.pt", decode(image.read_bytes())))


def test_post_multipart_and_a_batch_of_files(server, files):
    endpoint = url(server, "inference", "/predictions/effnet")
    cat = jpeg_bytes("chelsea")
    single = httpx.post(endpoint, files={"data": ("cat.jpg", cat, "image/jpeg")}, timeout=60)
    assert single.status_code == 200, single.text
    assert next(iter(single.json())) in CATS
    two = [("data", ("a.jpg", cat, "image/jpeg")), ("data", ("b.jpg", jpeg_bytes("coffee"), "image/jpeg"))]
    too_many = httpx.post(endpoint, files=two, timeout=60)  # effnet's batch size is 1
    assert too_many.status_code == 400 and "batch size (1)" in too_many.json()["message"]
    manage = url(server, "management", "/models")
    r = httpx.post(manage, params={"url": "effnet.mar", "model_name": "effnet_batch", "batch_size": 2,
                                   "initial_workers": 1, "synchronous": "true"}, timeout=120)
    assert r.status_code == 200, r.text
    try:
        batch = httpx.post(url(server, "inference", "/predictions/effnet_batch"), files=two, timeout=60)
    finally:
        httpx.delete(f"{manage}/effnet_batch", timeout=60)
    assert batch.status_code == 200, batch.text
    first, second = batch.json()
    assert next(iter(first)) in CATS and next(iter(second)) == LABELS[ESPRESSO]
    as_text = httpx.post(endpoint, data={"data": base64.b64encode(cat).decode()}, timeout=60)  # urlencoded base64
    assert next(iter(as_text.json())) in CATS


def test_rgba_png_and_greyscale_images(server, files):
    rgba = photo("chelsea").convert("RGBA")
    rgba.putalpha(200)
    for image in (rgba, photo("chelsea").convert("L")):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        response = httpx.put(url(server, "inference", "/predictions/effnet"), content=buffer.getvalue(), timeout=60)
        assert response.status_code == 200, response.text
        check_top5(response.json(), expected_top5(files["inputs"] / "model.pt", image))


def test_versioned_path_tgz_archive_and_ping(server):
    response = httpx.post(url(server, "inference", "/predictions/effnet/1.0"), content=jpeg_bytes("coffee"), timeout=60)
    assert next(iter(response.json())) == LABELS[ESPRESSO]
    response = httpx.post(url(server, "inference", "/predictions/effnet_tgz"), content=jpeg_bytes("coffee"), timeout=60)
    assert next(iter(response.json())) == LABELS[ESPRESSO]
    assert httpx.get(url(server, "inference", "/ping")).json() == {"status": "Healthy"}


@pytest.mark.parametrize("path, body, status, kind", [
    ("/predictions/effnet", b"this is not an image", 400, "BadRequestException"),
    ("/predictions/nope", b"x", 404, "ModelNotFoundException"),
    ("/predictions/effnet/9.9", b"x", 404, "ModelVersionNotFoundException"),
    ("/nowhere", b"x", 404, "ResourceNotFoundException"),
])
def test_errors_are_torchserve_json(server, path, body, status, kind):
    response = httpx.post(url(server, "inference", path), content=body, timeout=60)
    assert response.status_code == status
    error = response.json()
    assert error["code"] == status and error["type"].endswith(kind) and error["message"]
    assert response.text.endswith("}\n")


def test_archive_models_are_on_the_v2_api(server, files):
    with httpclient.InferenceServerClient(server.url) as client:
        meta = client.get_model_metadata("effnet")
        assert meta["inputs"] == [{"name": "input__0", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
        x = imagenet_preprocess(photo("chelsea"))[None]
        inp = httpclient.InferInput("input__0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        logits = client.infer("effnet", [inp]).as_numpy("output__0")
    assert int(logits[0].argmax()) in CAT_CLASSES


def test_triton_models_answer_json_tensors_on_predictions(server):
    response = httpx.post(url(server, "inference", "/predictions/twice"), json=[1.5, 2, -3], timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == {"y": [3.0, 4.0, -6.0]}
    response = httpx.post(url(server, "inference", "/predictions/twice"), json={"x": [1, 2]}, timeout=60)
    assert response.status_code == 400 and "shape" in response.json()["message"]


# -- management API ------------------------------------------------------------------------
def test_management_round_trip(server):
    manage = lambda path: url(server, "management", path)  # noqa: E731
    names = [m["modelName"] for m in httpx.get(manage("/models")).json()["models"]]
    assert "effnet" in names and "effnet_onnx" not in names
    r = httpx.post(manage("/models?url=effnet_onnx.mar&initial_workers=1&synchronous=true"), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": 'Model "effnet_onnx" Version: 2.0 registered with 1 initial workers'}
    predict = lambda: httpx.post(url(server, "inference", "/predictions/effnet_onnx"),  # noqa: E731
                                 content=jpeg_bytes("chelsea"), timeout=60)
    assert next(iter(predict().json())) in CATS
    r = httpx.put(manage("/models/effnet_onnx?min_worker=2&synchronous=true"), timeout=120)
    assert r.json() == {"status": "Workers scaled to 2 for model: effnet_onnx"}
    (described,) = httpx.get(manage("/models/effnet_onnx")).json()
    assert described["modelName"] == "effnet_onnx" and described["modelVersion"] == "2.0"
    assert described["minWorkers"] == 2 and len(described["workers"]) == 2
    assert all(w["status"] == "READY" for w in described["workers"])
    assert next(iter(predict().json())) in CATS
    r = httpx.delete(manage("/models/effnet_onnx"), timeout=120)
    assert r.json() == {"status": 'Model "effnet_onnx" unregistered'}
    after = predict()
    assert after.status_code == 404 and after.json()["type"] == "ModelNotFoundException"


def test_list_pages_and_describe_a_triton_model(server):
    first = httpx.get(url(server, "management", "/models?limit=1")).json()
    assert len(first["models"]) == 1 and first["nextPageToken"] == "1"
    rest = httpx.get(url(server, "management", f"/models?limit=100&next_page_token={first['nextPageToken']}")).json()
    assert "nextPageToken" not in rest
    (twice,) = httpx.get(url(server, "management", "/models/twice")).json()
    assert twice["modelVersion"] == "1" and twice["engine"] == "OnnxRuntime" and twice["workers"]


def test_scale_to_zero_and_back(server):
    manage = lambda path: url(server, "management", path)  # noqa: E731
    predict = lambda: httpx.put(url(server, "inference", "/predictions/effnet_tgz"),  # noqa: E731
                                content=jpeg_bytes("coffee"), timeout=60)
    assert httpx.put(manage("/models/effnet_tgz?min_worker=0&synchronous=true"), timeout=60).status_code == 200
    r = predict()
    assert r.status_code == 503 and r.json()["type"] == "ServiceUnavailableException"
    assert "no worker" in r.json()["message"]
    assert httpx.get(manage("/models/effnet_tgz")).json()[0]["workers"] == []
    assert httpx.put(manage("/models/effnet_tgz?min_worker=1&synchronous=true"), timeout=120).status_code == 200
    assert next(iter(predict().json())) == LABELS[ESPRESSO]


@pytest.mark.parametrize("url_param, words", [
    ("http://example.com/effnet.mar", "remote URLs is disabled"),
    ("file:///etc/passwd", "not allowed"),
    ("../inputs/model.pt", "not a file name inside the model store"),
    ("/etc/passwd", "not a file name inside the model store"),
    ("slip.mar", "'..'"),
    ("evil.mar", "--allow-custom-handlers"),
])
def test_unsafe_registrations_are_refused_and_leave_nothing(server, files, url_param, words):
    before = sorted(p.name for p in files["store"].iterdir())
    r = httpx.post(url(server, "management", "/models"), params={"url": url_param, "initial_workers": 1}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "BadRequestException" and words in r.json()["message"]
    assert sorted(p.name for p in files["store"].iterdir()) == before
    assert not files["victim"].exists() and not files["marker"].exists()
    assert "slip" not in httpx.get(url(server, "management", "/models")).text


def test_versions_and_set_default(server):
    manage = lambda path: url(server, "management", path)  # noqa: E731
    for version in ("1.0", "2.0"):
        r = httpx.post(manage(f"/models?url=multi_{version}.mar&initial_workers=1"), timeout=120)
        assert r.status_code == 200, r.text
    described = httpx.get(manage("/models/multi/all")).json()
    assert [d["modelVersion"] for d in described] == ["1.0", "2.0"]
    assert [d["modelVersion"] for d in httpx.get(manage("/models/multi")).json()] == ["1.0"]  # the default
    for version in ("1.0", "2.0"):
        r = httpx.put(url(server, "inference", f"/predictions/multi/{version}"), content=jpeg_bytes("coffee"), timeout=60)
        assert r.status_code == 200, r.text
        assert next(iter(r.json())) == str(ESPRESSO)  # no index_to_name.json: classes by index
    r = httpx.put(manage("/models/multi/2.0/set-default"))
    assert r.json() == {"status": 'Default version successfully updated for model "multi" to "2.0"'}
    assert [d["modelVersion"] for d in httpx.get(manage("/models/multi")).json()] == ["2.0"]
    r = httpx.delete(manage("/models/multi/2.0"), timeout=60)
    assert r.status_code == 403 and r.json()["type"] == "InvalidModelVersionException"
    assert httpx.delete(manage("/models/multi/1.0"), timeout=60).status_code == 200
    r = httpx.put(url(server, "inference", "/predictions/multi"), content=jpeg_bytes("coffee"), timeout=60)
    assert next(iter(r.json())) == str(ESPRESSO)
    assert httpx.put(url(server, "inference", "/predictions/multi/1.0"), content=b"x").status_code == 404
    assert httpx.delete(manage("/models/multi"), timeout=60).status_code == 200


def test_register_twice_conflicts(server):
    r = httpx.post(url(server, "management", "/models?url=effnet.mar&initial_workers=0"), timeout=60)
    assert r.status_code == 409 and r.json()["type"] == "ConflictStatusException"


# -- metrics API ---------------------------------------------------------------------------
def test_metrics_count_predictions(server):
    def requests_total() -> float:
        text = httpx.get(url(server, "metrics", "/metrics")).text
        line = next(l for l in text.splitlines() if l.startswith("ts_inference_requests_total") and 'model_name="effnet"' in l)
        assert 'model_version="1.0"' in line and "hostname=" in line
        return float(line.rsplit(" ", 1)[1])

    before = requests_total()
    httpx.put(url(server, "inference", "/predictions/effnet"), content=jpeg_bytes("chelsea"), timeout=60)
    assert requests_total() == before + 1
    text = httpx.get(url(server, "metrics", "/metrics?name[]=ts_queue_latency_microseconds")).text
    assert "# TYPE ts_queue_latency_microseconds counter" in text and "ts_inference_requests_total" not in text


# -- operator options ----------------------------------------------------------------------
def test_custom_handlers_run_only_when_allowed(start_server, files):
    server = start_server("--model-store", files["store"], "--models", "doubler=doubler.mar",
                          "--allow-custom-handlers", "--enable-token-auth", "--token-key-file",
                          str(files["store"].parent / "key_file.json"), frontends=FRONTENDS)
    keys = json.loads((files["store"].parent / "key_file.json").read_text())
    assert oct((files["store"].parent / "key_file.json").stat().st_mode & 0o777) == "0o600"
    endpoint = url(server, "inference", "/predictions/doubler")
    denied = httpx.post(endpoint, json=[1, 2], timeout=60)
    assert denied.status_code == 400 and denied.json()["type"] == "InvalidKeyException"
    auth = {"Authorization": f"Bearer {keys['inference']['key']}"}
    answer = httpx.post(endpoint, json=[1, 2], headers=auth, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"doubled": [2.0, 4.0], "batch": 1}
    assert files["doubler_marker"].exists()
    manage = {"Authorization": f"Bearer {keys['management']['key']}"}
    assert httpx.get(url(server, "management", "/models"), headers=auth).status_code == 400
    assert httpx.get(url(server, "management", "/models"), headers=manage).status_code == 200
    api = {"Authorization": f"Bearer {keys['API']['key']}"}
    assert httpx.get(url(server, "management", "/token?type=inference"), headers=manage).status_code == 400
    assert httpx.get(url(server, "management", "/token?type=inference"), headers=api).status_code == 200
    assert httpx.post(endpoint, json=[1, 2], headers=auth, timeout=60).status_code == 400  # the old key is gone
    fresh = json.loads((files["store"].parent / "key_file.json").read_text())["inference"]["key"]
    assert httpx.post(endpoint, json=[1, 2], headers={"Authorization": f"Bearer {fresh}"}, timeout=60).status_code == 200


def test_model_api_is_off_by_default(start_server, files):
    server = start_server("--model-store", files["store"], frontends=FRONTENDS)
    r = httpx.post(url(server, "management", "/models?url=effnet_onnx.mar"), timeout=60)
    assert r.status_code == 405 and r.json()["type"] == "MethodNotAllowedException"
    assert httpx.delete(url(server, "management", "/models/effnet")).status_code == 405
