"""A corrupt TorchScript file, a corrupt SavedModel or a missing framework never takes a good model down;
`--strict-readiness` and `--exit-on-error` decide what the server says about them."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import tritonclient.http as httpclient

from tests.backends.conftest import TORCHMOBILENET_CONFIG
from tests.conftest import CAT_CLASSES, pixels_nchw

# Slow tier: server subprocesses over the exported example model.
pytestmark = pytest.mark.slow

GOOD = "efficientnet_lite0_onnx"


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory, example_repo, blog_repo) -> Path:
    """The blog's two folders, configs as written, with damaged model files; beside them the good ONNX example."""
    repo = tmp_path_factory.mktemp("broken") / "models"
    shutil.copytree(example_repo / GOOD, repo / GOOD)
    # A TorchScript archive cut in half (an interrupted copy).
    torch_dir = repo / "torchmobilenet"
    (torch_dir / "1").mkdir(parents=True)
    whole = (blog_repo / "torchmobilenet" / "1" / "model.pt").read_bytes()
    (torch_dir / "1" / "model.pt").write_bytes(whole[: len(whole) // 2])
    (torch_dir / "config.pbtxt").write_text(TORCHMOBILENET_CONFIG)
    shutil.copyfile(blog_repo / "torchmobilenet" / "labels.txt", torch_dir / "labels.txt")
    # A SavedModel whose graph is fine but whose variables are garbage.
    tf_dir = repo / "tfmobilenet"
    shutil.copytree(blog_repo / "tfmobilenet", tf_dir)
    data = next((tf_dir / "1" / "model.savedmodel" / "variables").glob("variables.data-*"))
    data.write_bytes(b"\0" * 1000)
    return repo


def _index(server) -> dict[str, dict]:
    with httpclient.InferenceServerClient(server.url) as client:
        return {row["name"]: row for row in client.get_model_repository_index()}


def _good_model_classifies_a_cat(server) -> None:
    with httpclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready(GOOD)
        x = pixels_nchw("chelsea")[None]
        i = httpclient.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        assert int(client.infer(GOOD, [i]).as_numpy("output")[0].argmax()) in CAT_CLASSES


def test_corrupt_models_beside_a_good_one(start_server, broken_repo):
    server = start_server("--model-repository", broken_repo)  # defaults: --exit-on-error false, --strict-readiness true
    _good_model_classifies_a_cat(server)
    index = _index(server)
    assert index[GOOD]["state"] == "READY"
    assert index["torchmobilenet"]["state"] == "UNAVAILABLE"
    assert "torch.jit.load could not load" in index["torchmobilenet"]["reason"]
    assert index["tfmobilenet"]["state"] == "UNAVAILABLE"
    assert "tensorflow could not load SavedModel" in index["tfmobilenet"]["reason"]
    base = f"http://{server.url}"
    assert httpx.get(f"{base}/v2/health/live").status_code == 200
    assert httpx.get(f"{base}/v2/health/ready").status_code == 503  # strict: a model failed
    r = httpx.get(f"{base}/v2/models/torchmobilenet/ready")
    assert r.status_code != 200
    log = server.log()
    assert "failed to load model 'torchmobilenet'" in log and "failed to load model 'tfmobilenet'" in log


def test_missing_framework_and_relaxed_readiness(start_server, broken_repo, tmp_path, monkeypatch):
    # A tensorflow package that cannot be imported stands for TensorFlow not being installed.
    blocker = tmp_path / "blocker" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'tensorflow'\", name='tensorflow')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker.parent))
    server = start_server("--model-repository", broken_repo, "--strict-readiness", "false")
    _good_model_classifies_a_cat(server)
    reason = _index(server)["tfmobilenet"]["reason"]
    assert "platform 'tensorflow_savedmodel' is not available" in reason
    assert "No module named 'tensorflow'" in reason and "pip install 'triserve[tensorflow]'" in reason
    assert httpx.get(f"http://{server.url}/v2/health/ready").status_code == 200  # relaxed: the server is up


def test_exit_on_error_stops_the_server(start_server, broken_repo):
    server = start_server("--model-repository", broken_repo, "--exit-on-error", "true", wait=False)
    assert server.process.wait(timeout=300) != 0
    log = server.log()
    assert "exiting: model(s) failed to load" in log
    assert "tfmobilenet" in log and "torchmobilenet" in log
    assert "triserve ready" not in log
