"""One --model-repository folder, whatever it holds (a Triton repository, a TorchServe
model-store/ with config/config.properties, a TF Serving base path, a single bare model), served
from a read-only copy with nothing written under it (KServe's /mnt/models)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.inprocess import doubler_onnx, tiny_repository
from triserve.archiver import write_archive
from triserve.cli import parser
from triserve.errors import ServerError
from triserve.options import FRONTENDS, from_args
from triserve.repository.layout import detect
from triserve.server import Server

# KServe's TorchServe config.properties (kserve/docs samples), model_store pointing at /mnt/models.
KSERVE_CONFIG_PROPERTIES = """\
inference_address=http://0.0.0.0:8085
management_address=http://0.0.0.0:8085
metrics_address=http://0.0.0.0:8082
grpc_inference_port=7070
grpc_management_port=7071
enable_metrics_api=true
metrics_format=prometheus
number_of_netty_threads=4
job_queue_size=10
enable_envvars_config=true
install_py_dep_per_model=true
model_store=/mnt/models/model-store
model_snapshot={"name":"startup.cfg","modelCount":1,"models":{"twice":{"1.0":{"defaultVersion":true,"marName":"twice.mar","minWorkers":1,"maxWorkers":5,"batchSize":1,"maxBatchDelay":10,"responseTimeout":120}}}}
"""


def _archive(folder: Path, tmp_path: Path, name: str = "twice") -> Path:
    doubler_onnx(tmp_path / "src" / "twice.onnx")
    write_archive(name, "1.0", "base_handler", folder, serialized_file=str(tmp_path / "src" / "twice.onnx"))
    return folder / f"{name}.mar"


def torchserve_layout(root: Path, tmp_path: Path) -> Path:
    _archive(root / "model-store", tmp_path)
    (root / "config").mkdir(parents=True)
    (root / "config" / "config.properties").write_text(KSERVE_CONFIG_PROPERTIES)
    return root


def read_only(folder: Path) -> dict[str, tuple[int, float]]:
    """Make every file and folder under `folder` read-only; what it holds (size, mtime) by path."""
    snapshot = {}
    for path in sorted(folder.rglob("*"), reverse=True):
        snapshot[str(path.relative_to(folder))] = (path.stat().st_size, path.stat().st_mtime)
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    folder.chmod(folder.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return snapshot


def writable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def unchanged(folder: Path, before: dict[str, tuple[int, float]]) -> bool:
    after = {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime) for p in folder.rglob("*")}
    return after == before


# -- detection ------------------------------------------------------------------------------------
def test_each_layout_is_told_from_its_files(tmp_path):
    assert detect(tiny_repository(tmp_path / "triton")).kind == "triton"
    assert detect(torchserve_layout(tmp_path / "ts", tmp_path)).kind == "torchserve"
    (tmp_path / "tf" / "3").mkdir(parents=True)
    (tmp_path / "tf" / "3" / "saved_model.pb").write_bytes(b"")
    assert detect(tmp_path / "tf").kind == "tfserving"
    doubler_onnx(tmp_path / "one" / "model.onnx")
    layout = detect(tmp_path / "one")
    assert (layout.kind, layout.model) == ("bare", tmp_path / "one" / "model.onnx")
    assert detect(tmp_path / "one" / "model.onnx").kind == "bare"
    assert detect(tmp_path / "triton" / "simple").kind == "bare"  # one Triton model folder
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert detect(tmp_path / "sm").kind == "bare"
    assert detect(tmp_path / "missing").kind == "triton"  # the repository code reports it
    (tmp_path / "empty").mkdir()
    assert detect(tmp_path / "empty").kind == "triton"


def _options(*args: str):
    return from_args(parser().parse_args(["serve", *map(str, args)]))


def test_a_torchserve_layout_serves_its_store_with_its_config_properties(tmp_path):
    root = torchserve_layout(tmp_path / "mnt", tmp_path)
    options = _options("--model-repository", root)
    assert options.model_repositories == ()
    assert options.archives.model_store == root / "model-store"  # not config.properties' /mnt/models/model-store
    assert options.archives.models == ("twice=twice.mar",)  # its model_snapshot
    assert options.ports["torchserve_inference"] == 8085  # its addresses, unless --single-port


def test_a_tfserving_base_path_is_served_under_model_name(tmp_path):
    (tmp_path / "tf" / "1").mkdir(parents=True)
    (tmp_path / "tf" / "1" / "saved_model.pb").write_bytes(b"")
    options = _options("--model-repository", tmp_path / "tf", "--model-name", "m")
    assert (options.tfserving.base_path, options.tfserving.model_name, options.model_repositories) == (tmp_path / "tf", "m", ())


def test_a_bare_model_needs_a_name(tmp_path):
    doubler_onnx(tmp_path / "one" / "model.onnx")
    with pytest.raises(ServerError) as e:
        _options("--model-repository", tmp_path / "one")
    assert "--model-name" in e.value.message and str(tmp_path) in e.value.message


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ServerError) as e:
        _options("--model-repository", tmp_path / "notes.txt")
    assert "not a model" in e.value.message


def test_model_name_with_a_triton_repository_is_unused_not_refused(tmp_path):
    from triserve.server import build_dataplane

    options = _options("--model-repository", tiny_repository(tmp_path), "--model-name", "isvc")
    assert sorted(build_dataplane(options).manager.catalogs[0].names()) == ["doubler", "scores", "simple"]


# -- served from a read-only folder -------------------------------------------------------------
async def _serve_and_infer(args: list[str], calls) -> None:
    port = free_port()
    zeros = [a for name in FRONTENDS for a in (f"--{name.replace('_', '-')}-port", "0")]
    server = Server(_options(*args, *zeros, "--single-port", port))
    running = asyncio.create_task(server.run())
    try:
        async with asyncio.timeout(120), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            while True:  # the deadline bounds a hang only
                assert not running.done(), running.result()
                try:
                    if (await client.get("/v2/health/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            for path, body, expected in calls:
                response = await client.post(path, json=body)
                assert response.status_code == 200, response.text
                assert expected(response.json()), response.text
    finally:
        server.stop()
        assert await running == 0


DOUBLED = [2.0, 4.0, 6.0]


def _v2(name: str):
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
    return f"/v2/models/{name}/infer", body, lambda r: r["outputs"][0]["data"] == DOUBLED


def _torchserve(name: str):
    return f"/predictions/{name}", {"x": [1.0, 2.0, 3.0]}, lambda r: str(DOUBLED) in str(r)


def _layouts(tmp_path: Path):
    tiny = tiny_repository(tmp_path / "triton")
    yield "triton", tiny, [], [_v2("doubler")]
    yield "torchserve", torchserve_layout(tmp_path / "ts", tmp_path), [], [_torchserve("twice"), _v2("twice")]
    doubler_onnx(tmp_path / "onefile" / "model.onnx")
    yield "bare file", tmp_path / "onefile" / "model.onnx", ["--model-name", "isvc"], [_v2("isvc")]
    doubler_onnx(tmp_path / "onefolder" / "model.onnx")
    yield "bare folder", tmp_path / "onefolder", ["--model-name", "isvc"], [_v2("isvc")]
    yield "one Triton model", tiny / "doubler", ["--model-name", "isvc"], [_v2("isvc")]
    _archive(tmp_path / "onemar", tmp_path)
    yield "bare archive", tmp_path / "onemar", ["--model-name", "isvc"], [_torchserve("isvc")]


@pytest.mark.anyio
@pytest.mark.parametrize("which", ["triton", "torchserve", "bare file", "bare folder", "one Triton model", "bare archive"])
async def test_every_layout_serves_from_a_read_only_folder_and_nothing_is_written_under_it(tmp_path, which):
    name, source, args, calls = next(layout for layout in _layouts(tmp_path) if layout[0] == which)
    mounted = tmp_path / "mnt" / "models"  # a copy, read-only, standing in for KServe's /mnt/models
    mounted.parent.mkdir()
    if source.is_file():
        mounted.mkdir()
        shutil.copy2(source, mounted / source.name)
        target = mounted / source.name
    else:
        shutil.copytree(source, mounted)
        target = mounted
    before = read_only(mounted)
    try:
        assert not os.access(mounted, os.W_OK) or os.geteuid() == 0
        await _serve_and_infer(["--model-repository", target, *args], calls)
        assert unchanged(mounted, before)
    finally:
        writable(mounted)
