"""The server's wiring: the model sources the options name behind one data plane, and the front
ends around it in one event loop, in this process."""

from __future__ import annotations

import asyncio
import importlib
import socket

import httpx
import pytest

from tests.conftest import free_port
from tests.inprocess import tiny_repository
from triserve.cli import parser
from triserve.errors import ServerError
from triserve.options import FRONTENDS, ServerOptions, TFServingOptions, from_args
from triserve.repository.mar import MarCatalog
from triserve.repository.tfserving import TFServingModels
from triserve.server import BUILDERS, Server, build_dataplane


def only_http(port: int) -> dict[str, int]:
    """The v2 HTTP front end on `port`; every other one off."""
    return {name: port if name == "http" else 0 for name in FRONTENDS}


@pytest.mark.anyio
async def test_a_triton_repository_is_served_by_the_data_plane(tmp_path):
    dataplane = build_dataplane(ServerOptions(model_repositories=(tiny_repository(tmp_path),)))
    assert dataplane.registry is None and dataplane.configurable is None
    await dataplane.manager.start()
    try:
        assert dataplane.names() == ["doubler", "scores", "simple"] and dataplane.ready()
    finally:
        await dataplane.manager.close()


def test_archives_and_tf_serving_models_are_the_registry_and_the_configurable_catalog(tmp_path):
    (tmp_path / "store").mkdir()
    options = from_args(parser().parse_args([
        "serve", "--model-store", str(tmp_path / "store"), "--model-base-path", str(tmp_path / "m"), "--model-name", "m",
    ]))
    dataplane = build_dataplane(options)
    assert isinstance(dataplane.registry, MarCatalog)
    assert isinstance(dataplane.configurable, TFServingModels) and dataplane.configurable.names() == ["m"]


def test_a_missing_models_conf_is_a_clear_error(tmp_path):
    missing = tmp_path / "models.conf"
    with pytest.raises(ServerError) as e:
        build_dataplane(ServerOptions(tfserving=TFServingOptions(config_file=missing)))
    assert f"failed to read model config file {missing}" in e.value.message


def test_a_model_name_without_a_base_path_is_refused():
    with pytest.raises(ServerError) as e:
        build_dataplane(from_args(parser().parse_args(["serve", "--model-name", "m"])))
    assert e.value.message == "--model-name needs --model-base-path"


async def ready_response(port: int, running: asyncio.Task) -> httpx.Response:
    """/v2/health/ready once it answers 200 over a real socket (the deadline only bounds a hang)."""
    async with asyncio.timeout(120), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        while True:
            assert not running.done(), running.result()
            try:
                response = await client.get("/v2/health/ready")
                if response.status_code == 200:
                    return response
            except httpx.ConnectError:
                pass  # not listening yet
            await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_run_serves_until_stopped(tmp_path):
    port = free_port()
    server = Server(ServerOptions(model_repositories=(tiny_repository(tmp_path),), ports=only_http(port)))
    running = asyncio.create_task(server.run())
    assert (await ready_response(port, running)).status_code == 200
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.post("/v2/models/doubler/infer", json={
            "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
        })
    assert response.json()["outputs"][0]["data"] == [2, 4, 6]
    assert [(title, p) for title, p, _ in server.frontends] == [("KServe v2 HTTP", port)]
    server.stop()
    assert await running == 0
    assert server.manager.models() == []  # every model closed on the way out


@pytest.mark.anyio
async def test_run_returns_1_when_a_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(ServerOptions(model_repositories=(tiny_repository(tmp_path),), ports=only_http(port)))
        assert await server.run() == 1
    assert server.frontends == [] and server.manager.models() == []


@pytest.mark.anyio
async def test_run_returns_1_before_listening_when_a_model_fails_and_exit_on_error(tmp_path):
    repo = tiny_repository(tmp_path)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    options = ServerOptions(model_repositories=(repo,), ports=only_http(free_port()), exit_on_error=True)
    server = Server(options)
    assert await server.run() == 1
    assert server.frontends == [] and server.manager.models() == []


def test_every_front_end_has_a_builder():
    assert set(BUILDERS) == set(FRONTENDS)
    for spec in BUILDERS.values():
        module, _, function = spec.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), spec


def ready_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("triserve ready: ")]


async def started(server: Server, port: int, caplog) -> str:
    """The ready line of `server`, once its front ends listen (the deadline only bounds a hang)."""
    running = asyncio.create_task(server.run())
    async with asyncio.timeout(120):
        while not ready_lines(caplog):
            assert not running.done(), running.result()
            await asyncio.sleep(0.05)
    server.stop()
    assert await running == 0
    (line,) = ready_lines(caplog)
    return line


@pytest.mark.anyio
async def test_the_ready_line_says_all_models_are_ready(tmp_path, caplog):
    caplog.set_level("INFO", logger="triserve")
    port = free_port()
    line = await started(Server(ServerOptions(model_repositories=(tiny_repository(tmp_path),), ports=only_http(port))),
                         port, caplog)
    assert line == f"triserve ready: KServe v2 HTTP on 127.0.0.1:{port}; all 3 models ready"


@pytest.mark.anyio
async def test_the_ready_line_names_failed_models_and_their_reasons(tmp_path, caplog):
    caplog.set_level("INFO", logger="triserve")
    repo = tiny_repository(tmp_path)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    port = free_port()
    line = await started(Server(ServerOptions(model_repositories=(repo,), ports=only_http(port))), port, caplog)
    assert line.startswith(f"triserve ready: KServe v2 HTTP on 127.0.0.1:{port}; 1 of 4 models failed to load"
                           " (/v2/health/ready answers 503 until they load: --strict-readiness): broken: ")
    assert [r.levelname for r in caplog.records if r.getMessage() == line] == ["WARNING"]
    assert len(line) > len("...broken: ") and str(tmp_path) not in line


@pytest.mark.anyio
async def test_explicit_mode_loads_the_archives_models_names_and_load_model_names(tmp_path, caplog):
    from tests.inprocess import doubler_onnx
    from triserve.archiver import write_archive

    caplog.set_level("INFO", logger="triserve")
    doubler_onnx(tmp_path / "doubler.onnx")
    store = tmp_path / "store"
    write_archive("twice", "1.0", "base_handler", store, serialized_file=str(tmp_path / "doubler.onnx"))
    port = free_port()
    options = from_args(parser().parse_args([
        "serve", "--model-repository", str(tiny_repository(tmp_path)), "--model-store", str(store),
        "--models", "twice=twice.mar", "--model-control-mode", "explicit", "--load-model", "simple",
        *[arg for name, p in only_http(port).items() for arg in (f"--{name.replace('_', '-')}-port", str(p))],
    ]))
    server = Server(options)
    line = await started(server, port, caplog)
    assert line.endswith("; all 2 models ready")
    loaded = sorted(r.getMessage().split(" version")[0] for r in caplog.records if r.getMessage().startswith("loaded"))
    assert loaded == ["loaded model 'simple'", "loaded model 'twice'"]  # explicit: 'scores' was not asked
    assert server.dataplane.status("twice").state == "READY" and not server.dataplane.status("scores").state


def test_the_batch_calibration_mode_and_its_cache_reach_the_model_manager(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dataplane = build_dataplane(from_args(parser().parse_args(["serve", "--batch-calibration", "remeasure"])))
    calibration = dataplane.manager.calibration
    assert (calibration.mode, calibration.cache_dir) == ("remeasure", tmp_path / "cache" / "triserve")
