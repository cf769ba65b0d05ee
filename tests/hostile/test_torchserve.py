"""Hostile input to the TorchServe APIs, to model archives and to model uploads, in-process:
requests with a thousand files, decompression bombs, archives that try to write outside their
folder, and inputs whose errors could echo server internals. Each is refused with TorchServe's
(or Triton's) own error, while a concurrent good request is answered correctly."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from tests.inprocess import tiny_repository, triton_dataplane
from tests.protocols.torchserve.conftest import store  # noqa: F401  (the archives of the TorchServe tests)
from tests.protocols.torchserve.support import (
    ROW, SUM, archive_dataplane, assert_error, client, jpeg, tar_bomb, zip_bomb,
)
from tests.torchserve_archives import escape_to, manifest, tar_archive, zip_archive
from triserve.core.status import UNAVAILABLE
from triserve.protocols.kserve.rest import V2HTTP
from triserve.protocols.torchserve.inference import TorchServeInference
from triserve.protocols.torchserve.management import TorchServeManagement

pytestmark = pytest.mark.anyio

GiB = 1024**3
ADDED = {"OUTPUT0": SUM, "OUTPUT1": [i - 1 for i in range(16)]}
GOOD_REQUESTS = 5
MANIFEST = {"MAR-INF/MANIFEST.json": manifest("bomb", "base_handler", serializedFile="model.onnx")}
# What an answer must never show: object reprs, the server's temporary folders, stack traces.
INTERNALS = ("object at 0x", "BytesIO", "triserve-mar-", "triserve-override-", "Traceback")


def assert_plain(text: str) -> None:
    assert not [word for word in INTERNALS if word in text], text


@pytest.fixture(scope="module")
def hostile_store(store, tmp_path_factory) -> Path:  # noqa: F811
    """The TorchServe tests' good archives beside 1 GiB zip and tar.gz bombs and unsafe archives."""
    hostile = tmp_path_factory.mktemp("hostile_store")
    for name in ("adder.mar", "colors.mar", "broken.mar"):
        shutil.copy(store / name, hostile / name)
    zip_bomb(hostile / "bomb.mar", GiB, **MANIFEST)  # about 4.7 MB on disk
    tar_bomb(hostile / "tarbomb.tar.gz", GiB, **MANIFEST)
    victim = victim_file(hostile)
    good = {**MANIFEST, "model.onnx": b"x"}
    zip_archive(hostile / "slip.mar", {**good, escape_to(victim): b"pwned"})
    zip_archive(hostile / "absolute.mar", {**good, str(victim): b"pwned"})
    zip_archive(hostile / "symlink.mar", good, symlinks={"index_to_name.json": str(victim)})
    tar_archive(hostile / "slip.tar.gz", {**good, escape_to(victim): b"pwned"})
    tar_archive(hostile / "symlink.tar.gz", good, symlinks={"index_to_name.json": str(victim)})
    with tarfile.open(hostile / "hardlink.tar.gz", "w:gz") as t:
        for name, data in good.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("labels.json")
        link.type, link.linkname = tarfile.LNKTYPE, str(victim)
        t.addfile(link)
    zip_archive(hostile / "longname.mar", {**good, "a" * 300: b"x"})
    return hostile


def victim_file(store: Path) -> Path:
    """Where the unsafe archives try to write."""
    return store.parent / "victim" / "pwned.txt"


def extracted_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# -- one request, one job ------------------------------------------------------------------------
@pytest.mark.parametrize("parts", [100, 1000])
async def test_more_files_than_the_batch_size_are_refused_at_once_and_queue_nothing(hostile_store, parts):
    files = [("data", (f"{i}.json", json.dumps(ROW), "application/json")) for i in range(parts)]
    async with archive_dataplane(hostile_store, "adder.mar") as dataplane:  # batch size 1, queue of 100
        model = dataplane.resolve("adder")
        async with client(TorchServeInference(dataplane).app()) as inference:

            async def hostile():
                started = time.perf_counter()
                response = await inference.post("/predictions/adder", files=files)
                return response, time.perf_counter() - started

            (refused, seconds), *good = await asyncio.gather(
                hostile(), *(inference.post("/predictions/adder", json=ROW) for _ in range(GOOD_REQUESTS)))
    print(f"\n{parts}-part request refused in {seconds * 1000:.1f} ms")
    message = assert_error(refused, 400, "BadRequestException")["message"]
    assert f"{parts} parts" in message and "batch size (1)" in message
    assert [g.status_code for g in good] == [200] * GOOD_REQUESTS and all(g.json() == ADDED for g in good)
    assert model.stats.inference_count == GOOD_REQUESTS  # the hostile request never reached the queue
    assert model.stats.pending == 0


# -- decompression bombs -----------------------------------------------------------------------
@pytest.mark.parametrize("bomb", ["bomb.mar", "tarbomb.tar.gz"])
async def test_a_gigabyte_bomb_is_refused_at_registration_without_writing_it(hostile_store, bomb):
    async with archive_dataplane(hostile_store, "adder.mar") as dataplane:
        root = dataplane.registry._root
        before = sorted(root.iterdir())
        async with client(TorchServeManagement(dataplane, True).app()) as management:
            async with client(TorchServeInference(dataplane).app()) as inference:

                async def register():
                    started = time.perf_counter()
                    response = await management.post("/models", params={"url": bomb, "synchronous": "true"})
                    return response, time.perf_counter() - started

                (refused, seconds), *good = await asyncio.gather(
                    register(), *(inference.post("/predictions/adder", json=ROW) for _ in range(GOOD_REQUESTS)))
        names = dataplane.names()
    print(f"\n{bomb} (1 GiB uncompressed) refused at registration in {seconds * 1000:.1f} ms")
    message = assert_error(refused, 400, "BadRequestException")["message"]
    assert "--max-archive-ratio" in message and "decompression bomb" in message
    assert_plain(message)
    assert all(g.json() == ADDED for g in good)
    assert names == ["adder"]
    assert sorted(root.iterdir()) == before and extracted_bytes(root) < 1024**2  # only adder's files


async def test_bombs_fail_to_load_at_startup_with_the_reason_and_the_others_serve(hostile_store):
    started = time.perf_counter()
    async with archive_dataplane(hostile_store, "adder.mar", "bomb.mar", "tarbomb.tar.gz") as dataplane:
        seconds = time.perf_counter() - started
        root = dataplane.registry._root
        statuses = {name: dataplane.status(name) for name in ("bomb", "tarbomb")}
        async with client(TorchServeInference(dataplane).app()) as inference:
            good = await inference.post("/predictions/adder", json=ROW)
            bomb = await inference.post("/predictions/bomb", json=ROW)
        written = extracted_bytes(root)
    print(f"\nstartup with two 1 GiB bombs beside adder.mar took {seconds * 1000:.1f} ms")
    assert good.json() == ADDED
    for status in statuses.values():
        assert status.state == UNAVAILABLE and "--max-archive-ratio" in status.reason
        assert_plain(status.reason)
    assert "no worker" in assert_error(bomb, 503, "ServiceUnavailableException")["message"]
    assert written < 1024**2  # adder's files only


# -- archives that reach outside their folder --------------------------------------------------
@pytest.mark.parametrize("archive, words", [
    ("slip.mar", "'..'"), ("absolute.mar", "absolute path"), ("symlink.mar", "symbolic link"),
    ("slip.tar.gz", "'..'"), ("symlink.tar.gz", "is a link"), ("hardlink.tar.gz", "is a link"),
    ("longname.mar", "longer than 255 bytes"),
])
async def test_unsafe_archives_are_refused_at_registration_and_write_nothing(hostile_store, archive, words):
    async with archive_dataplane(hostile_store, "adder.mar") as dataplane:
        root = dataplane.registry._root
        before = sorted(root.iterdir())
        async with client(TorchServeManagement(dataplane, True).app()) as management:
            response = await management.post("/models", params={"url": archive, "synchronous": "true"})
        after = sorted(root.iterdir())
    message = assert_error(response, 400, "BadRequestException")["message"]
    assert words in message and len(message) < 400
    assert_plain(message)
    assert after == before and not victim_file(hostile_store).parent.exists()


# -- answers without internals -----------------------------------------------------------------
async def test_an_undecodable_image_is_refused_without_internals(hostile_store):
    async with archive_dataplane(hostile_store, "colors.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            garbage, truncated, good = await asyncio.gather(
                inference.put("/predictions/colors", content=b"this is not an image"),
                inference.post("/predictions/colors", files={"data": ("x.jpg", jpeg((250, 0, 0))[:200], "image/jpeg")}),
                inference.put("/predictions/colors", content=jpeg((250, 0, 0))),
            )
    for response in (garbage, truncated):
        message = assert_error(response, 400, "BadRequestException")["message"]
        assert message.startswith("the request body is not a decodable image")
        assert_plain(message)
    assert next(iter(good.json())) == "red"


async def test_a_model_that_fails_to_load_is_described_without_server_paths(hostile_store):
    async with archive_dataplane(hostile_store, "adder.mar", "broken.mar") as dataplane:
        reason = dataplane.status("broken").reason
    assert "broken/model.onnx" in reason  # the file, named from the model
    assert_plain(reason)


UPLOADED_CONFIG = json.dumps({
    "name": "uploaded", "platform": "onnxruntime_onnx", "max_batch_size": 2,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
})


@pytest.mark.parametrize("model, files, words", [
    ("uploaded", {"file:1/" + "a" * 300: b"x"}, "longer than 255 bytes"),
    ("uploaded", {"file:" + "/".join(["d" * 200] * 6): b"x"}, "longer than 1024 bytes"),
    ("a" * 300, {"file:1/model.onnx": b"x"}, "longer than 255 bytes"),
    ("uploaded", {"file:1": b"x", "file:1/model.onnx": b"x"}, "could not be written"),
    ("uploaded", {"file:1/model.onnx": b"not an ONNX model"}, "uploaded/1/model.onnx"),
], ids=["long file name", "long path", "long model name", "file in the way", "broken model file"])
async def test_uploads_the_server_cannot_write_or_load_are_refused_without_server_paths(tmp_path, model, files, words):
    parameters = {"config": UPLOADED_CONFIG.replace('"uploaded"', json.dumps(model)),
                  **{key: base64.b64encode(data).decode() for key, data in files.items()}}
    async with triton_dataplane(tiny_repository(tmp_path), control_mode="explicit") as dataplane:
        transport_client = client(V2HTTP(dataplane).app())
        async with transport_client as v2:
            refused, good = await asyncio.gather(
                v2.post(f"/v2/repository/models/{model}/load", json={"parameters": parameters}),
                v2.get("/v2/health/live"),
            )
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]
    assert words in message and len(message) < 600
    assert_plain(message)
    assert good.status_code == 200


# -- worker counts ------------------------------------------------------------------------------
async def test_a_billion_workers_is_refused_and_the_model_keeps_serving(hostile_store):
    async with archive_dataplane(hostile_store, "adder.mar") as dataplane:
        before = dataplane.resolve("adder").instance_count
        async with client(TorchServeManagement(dataplane, True).app()) as management:
            async with client(TorchServeInference(dataplane).app()) as inference:
                refused = await management.put(
                    "/models/adder", params={"min_worker": "1000000000", "synchronous": "true"})
                good = await inference.post("/predictions/adder", json=ROW)
        workers = dataplane.resolve("adder").instance_count
    message = assert_error(refused, 400, "BadRequestException")["message"]
    assert "at most 64" in message
    assert good.json() == ADDED and workers == before  # the old instances still serve
