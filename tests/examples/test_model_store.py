"""`export-examples` writes a TorchServe model store whose archive serves like TorchServe's example."""

from __future__ import annotations

import json
import zipfile

import httpx
import pytest

from tests.conftest import CAT_CLASSES, jpeg_bytes

# Slow tier: the exported example archive and a server of it.
pytestmark = pytest.mark.slow


def test_example_archive_classifies_with_torchserve_labels(example_repo, start_server):
    store = example_repo.parent / "model_store"
    archive = store / "efficientnet_lite0.mar"
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["MAR-INF/MANIFEST.json", "index_to_name.json", "model.pt"]
        model = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]
        labels = json.loads(z.read("index_to_name.json"))
    assert model == {"modelName": "efficientnet_lite0", "serializedFile": "model.pt",
                     "handler": "image_classifier", "modelVersion": "1.0"}
    assert labels["0"] == ["n01440764", "tench"] and labels["285"] == ["n02124075", "Egyptian cat"]
    server = start_server("--model-store", store, "--models", "all", frontends=("torchserve_inference",))
    port = server.ports["torchserve_inference"]
    answer = httpx.put(f"http://127.0.0.1:{port}/predictions/efficientnet_lite0", content=jpeg_bytes("chelsea"),
                       timeout=60).json()
    assert next(iter(answer)) in {labels[str(i)][-1] for i in CAT_CLASSES}
    assert len(answer) == 5 and abs(sum(answer.values()) - 1) < 0.2
