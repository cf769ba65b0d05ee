import io
import re
from importlib import resources

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.console.models import console_repository
from tests.inprocess import triton_dataplane
from triserve.console import Console
from triserve.core.types import InferRequest
from triserve.protocols.kserve.rest import V2HTTP


def _client(dataplane, console=None):
    console = console or Console(dataplane)
    app = V2HTTP(dataplane).app(console.routes())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def chelsea_jpeg() -> bytes:
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.anyio
async def test_models_lists_every_model_with_state_versions_and_batching(tmp_path):
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        async with _client(dataplane) as client:
            response = await client.get("/console/api/models")
    assert response.status_code == 200
    data = response.json()
    assert data["server"]["control_mode"] == "none"
    rows = {m["name"]: m for m in data["models"]}
    assert set(rows) == {"simple", "scores", "doubler", "colors"}
    simple = rows["simple"]
    assert simple["state"] == "READY"
    assert simple["versions"] == [{"version": 1, "state": "READY", "reason": ""}]
    assert simple["platform"] == "onnxruntime_onnx"
    assert simple["instances"] == 1
    assert simple["max_batch_size"] == 8 and simple["batch_cap"] == 8
    assert simple["source"] == "Triton model repository"
    assert "KServe v2 HTTP" in simple["protocols"]
    assert [t["name"] for t in simple["inputs"]] == ["INPUT0", "INPUT1"]
    assert rows["colors"]["classifier"] == "tensor"
    assert rows["simple"]["classifier"] is None


@pytest.mark.anyio
async def test_a_model_that_fails_to_load_shows_its_reason(tmp_path):
    repo = console_repository(tmp_path)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nplatform: "onnxruntime_onnx"\n')
    async with triton_dataplane(repo, strict_readiness=False) as dataplane:
        async with _client(dataplane) as client:
            data = (await client.get("/console/api/models")).json()
    broken = {m["name"]: m for m in data["models"]}["broken"]
    assert broken["state"] == "UNAVAILABLE"
    assert broken["reason"]


@pytest.mark.anyio
async def test_model_detail_has_config_metadata_labels_and_statistics(tmp_path):
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        async with _client(dataplane) as client:
            response = await client.get("/console/api/models/scores")
            missing = await client.get("/console/api/models/nope")
    assert response.status_code == 200
    detail = response.json()
    assert 'name: "scores"' in detail["config_pbtxt"]
    assert detail["config"]["max_batch_size"] == 4
    assert detail["metadata"]["inputs"] == [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 5]}]
    assert detail["labels"] == {"OUTPUT": ["zero", "one", "two", "three", "four"]}
    assert detail["statistics"]["success"] == 0
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]


@pytest.mark.anyio
async def test_traffic_returns_samples_after_since(tmp_path):
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        console = Console(dataplane)
        console.sampler.sample()
        model = dataplane.model("scores")
        await dataplane.infer(model, InferRequest({"INPUT": np.ones((1, 5), np.float32)}))
        second = console.sampler.sample()
        async with _client(dataplane, console) as client:
            everything = (await client.get("/console/api/traffic")).json()
            later = (await client.get(f"/console/api/traffic?since={second['time']}")).json()
            bad = await client.get("/console/api/traffic?since=yesterday")
        await console.sampler.stop()
    assert len(everything["samples"]) >= 2
    assert everything["totals"]["scores"] == 1
    assert all(s["time"] > second["time"] for s in later["samples"])
    assert bad.status_code == 400 and "since" in bad.json()["error"]


@pytest.mark.anyio
async def test_classify_answers_top_classes_of_every_image_classifier(tmp_path):
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 250
    red[..., 2] = 40
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        async with _client(dataplane) as client:
            response = await client.post("/console/api/classify", content=_png(red), headers={"content-type": "image/png"})
    assert response.status_code == 200
    data = response.json()
    assert [r["model"] for r in data["results"]] == ["colors"]
    result = data["results"][0]
    assert [t["label"] for t in result["top"]] == ["red", "blue", "green"]
    assert result["top"][0]["probability"] > 0.99
    assert result["latency_ms"] >= 0
    assert {s["model"] for s in data["skipped"]} == {"simple", "scores", "doubler"}


@pytest.mark.anyio
async def test_classify_chelsea_with_the_tiny_classifier(tmp_path):
    """chelsea (a ginger cat): red is the strongest channel."""
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        async with _client(dataplane) as client:
            response = await client.post("/console/api/classify", content=chelsea_jpeg())
    assert response.json()["results"][0]["top"][0]["label"] == "red"


@pytest.mark.anyio
async def test_classify_refuses_what_is_not_an_image(tmp_path):
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        async with _client(dataplane) as client:
            garbage = await client.post("/console/api/classify", content=b"not an image at all")
            empty = await client.post("/console/api/classify", content=b"")
    assert garbage.status_code == 400
    assert "not a decodable image" in garbage.json()["error"]
    assert "BytesIO" not in garbage.json()["error"]
    assert empty.status_code == 400


@pytest.mark.anyio
async def test_load_and_unload_in_explicit_mode(tmp_path):
    async with triton_dataplane(console_repository(tmp_path), control_mode="explicit", load_models=["simple"]) as dataplane:
        async with _client(dataplane) as client:
            before = {m["name"]: m["state"] for m in (await client.get("/console/api/models")).json()["models"]}
            loaded = await client.post("/console/api/models/colors/load")
            unloaded = await client.post("/console/api/models/simple/unload")
            reloaded = await client.post("/console/api/models/colors/reload")
            after = {m["name"]: m["state"] for m in (await client.get("/console/api/models")).json()["models"]}
    assert before["simple"] == "READY" and before["colors"] != "READY"
    assert loaded.status_code == 200 and loaded.json()["state"] == "READY"
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "UNAVAILABLE"
    assert reloaded.status_code == 200
    assert after["colors"] == "READY" and after["simple"] == "UNAVAILABLE"


@pytest.mark.anyio
async def test_load_is_refused_unless_explicit_mode(tmp_path):
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        async with _client(dataplane) as client:
            response = await client.post("/console/api/models/simple/unload")
    assert response.status_code == 503
    assert "explicit" in response.json()["error"]


@pytest.mark.anyio
async def test_the_page_and_its_assets_are_served_and_small(tmp_path):
    async with triton_dataplane(console_repository(tmp_path)) as dataplane:
        console = Console(dataplane)
        async with _client(dataplane, console) as client:
            page = await client.get("/")
            assets = [await client.get(f"/console/{name}") for name in ("console.js", "console.css")]
            missing = await client.get("/console/secrets.txt")
        await console.sampler.stop()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/console/console.js" in page.text
    assert all(a.status_code == 200 for a in assets)
    assert missing.status_code == 404
    static = resources.files("triserve.console").joinpath("static")
    total = sum(f.stat().st_size for f in static.iterdir())  # type: ignore[attr-defined]
    assert total < 300 * 1024
    for f in static.iterdir():
        assert not re.search(r"(src|href)=\"(https?:)?//", f.read_text()), f"{f.name} loads from outside the server"
        assert "https://" not in f.read_text().replace("http://www.w3.org/2000/svg", "")


@pytest.mark.anyio
async def test_models_and_classify_cover_torchserve_archives_beside_a_repository(tmp_path):
    from tests.inprocess import tiny_repository
    from tests.protocols.torchserve.support import archive_dataplane, model_store

    red = np.zeros((240, 240, 3), np.uint8)
    red[..., 0] = 250
    store = model_store(tmp_path)
    async with archive_dataplane(store, "colors.mar", "broken.mar", repository=tiny_repository(tmp_path / "repo")) as dataplane:
        async with _client(dataplane) as client:
            rows = {m["name"]: m for m in (await client.get("/console/api/models")).json()["models"]}
            answer = (await client.post("/console/api/classify", content=_png(red))).json()
    assert rows["colors"]["source"] == "TorchServe archive"
    assert rows["colors"]["state"] == "READY"
    assert rows["colors"]["classifier"] == "imagenet"
    assert rows["broken"]["source"] == "TorchServe archive"
    assert rows["broken"]["state"] == "UNAVAILABLE" and rows["broken"]["reason"]
    assert rows["simple"]["source"] == "Triton model repository"
    results = {r["model"]: r for r in answer["results"]}
    assert set(results) == {"colors"}
    assert results["colors"]["kind"] == "imagenet"
    assert results["colors"]["top"][0]["probability"] > results["colors"]["top"][1]["probability"]


@pytest.mark.anyio
async def test_the_console_is_at_console_on_the_single_port(tmp_path):
    import asyncio

    from tests.conftest import free_port
    from tests.test_single_port import _options, _until
    from triserve.server import Server

    port, grpc_port = free_port(), free_port()
    server = Server(_options(tmp_path, port, grpc_port))
    running = asyncio.create_task(server.run())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            await _until(client, "/v2/health/ready", 200, running)
            page = await client.get("/console")
            models = await client.get("/console/api/models")
            document = await client.get("/openapi.json")
            docs = await client.get("/docs")
            ping = await client.get("/ping")  # still TorchServe's
    finally:
        server.stop()
        assert await running == 0
    assert page.status_code == 200 and "/console/console.js" in page.text
    assert "simple" in {m["name"] for m in models.json()["models"]}
    assert document.json()["openapi"] == "3.1.0"
    assert docs.status_code == 200
    assert ping.json() == {"status": "Healthy"}
