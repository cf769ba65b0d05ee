"""TorchServe APIs on one address share one listener (KServe's config.properties does this)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import free_port
from triserve.archiver import write_archive
from triserve.options import FRONTENDS, ServerOptions, TorchServeOptions
from triserve.options import ArchiveOptions
from triserve.server import Server
from triserve.shared_listener import groups


def ports(**chosen: int) -> dict[str, int]:
    return {name: chosen.get(name, 0) for name in FRONTENDS}


def test_groups_are_the_torchserve_apis_on_one_host_and_port():
    assert groups(ServerOptions(ports=ports(torchserve_inference=1, torchserve_management=2))) == {}
    assert groups(ServerOptions(ports=ports(torchserve_inference=1, torchserve_management=1,
                                            torchserve_metrics=1))) == {
        "torchserve_inference": ["torchserve_management", "torchserve_metrics"]}
    apart = ServerOptions(ports=ports(torchserve_inference=1, torchserve_management=1),
                          torchserve=TorchServeOptions(hosts={"torchserve_management": "0.0.0.0"}))
    assert groups(apart) == {}  # the same port on two addresses: two listeners
    assert groups(ServerOptions(ports=ports(http=1, torchserve_inference=1))) == {}  # only TorchServe's own


@pytest.mark.anyio
async def test_inference_and_management_answer_on_one_port(tmp_path, caplog):
    from tests.inprocess import doubler_onnx

    caplog.set_level("INFO", logger="triserve")
    doubler_onnx(tmp_path / "twice.onnx")
    write_archive("twice", "1.0", "base_handler", tmp_path / "store", serialized_file=str(tmp_path / "twice.onnx"))
    port = free_port()
    server = Server(ServerOptions(ports=ports(torchserve_inference=port, torchserve_management=port),
                                  archives=ArchiveOptions(model_store=tmp_path / "store", models=("twice.mar",))))
    running = asyncio.create_task(server.run())
    try:
        async with asyncio.timeout(120), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while True:  # the deadline only bounds a hang
                assert not running.done(), running.result()
                try:
                    ping = await client.get("/ping")
                    if ping.status_code == 200:
                        break
                except httpx.ConnectError:
                    pass
                await asyncio.sleep(0.05)
            assert ping.json() == {"status": "Healthy"}
            models = await client.get("/models")
            assert models.status_code == 200 and models.json()["models"][0]["modelName"] == "twice"
            described = await client.get("/models/twice")
            assert described.status_code == 200 and described.json()[0]["modelName"] == "twice"
            missing = await client.post("/predictions/nope", content=b"1")
            assert missing.status_code == 404  # the inference API's own answer
    finally:
        server.stop()
        assert await running == 0
    assert [(title, p) for title, p, _ in server.frontends] == [("TorchServe inference and TorchServe management", port)]
    assert any(f"TorchServe inference and TorchServe management on 127.0.0.1:{port}" in r.getMessage()
               for r in caplog.records)
