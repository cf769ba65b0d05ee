"""Small real TorchServe archives for the in-process tests, made by the real torch-model-archiver
around tiny ONNX models, and a data plane serving them as `triserve serve --model-store` does.

- `adder.mar` (adder 1.0, base_handler): Triton's `simple` model, JSON tensors in and out;
- `adder_v2.mar` (adder 2.0, base_handler): the same inputs, OUTPUT0 = INPUT0 * INPUT1;
- `adder_v3.mar` (adder 3.0) and `broken.mar` (broken 1.0): model.onnx is not a model, so loading fails;
- `colors.mar` (colors 1.0, image_classifier): FP32 [batch, 3, 224, 224] -> the mean of each
  channel [batch, 3], labelled red, green, blue by its index_to_name.json.

Decompression bombs (`zip_bomb`, `tar_bomb`) are written here too, streamed as they are made.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
from onnx import TensorProto, helper
from PIL import Image

from tests.inprocess import _save, running_dataplane, simple_onnx
from tests.torchserve_archives import torch_model_archiver
from triserve.core.dataplane import DataPlane
from triserve.options import ArchiveOptions
from triserve.repository.mar import MarCatalog, from_options
from triserve.repository.triton import TritonRepositories

COLORS = {"0": ["n00000001", "red"], "1": "green", "2": "blue"}
ROW = {"INPUT0": list(range(16)), "INPUT1": [1] * 16}  # one request for `adder`
SUM = [i + 1 for i in range(16)]
DIFFERENCE = [i - 1 for i in range(16)]
PRODUCT = list(range(16))


def product_onnx(path: Path) -> Path:
    """`simple`'s inputs and outputs, but OUTPUT0 is the product."""
    tensor = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 16])  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Mul", ["INPUT0", "INPUT1"], ["OUTPUT0"]), helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "product", [tensor("INPUT0"), tensor("INPUT1")], [tensor("OUTPUT0"), tensor("OUTPUT1")],
    )
    _save(graph, path)
    return path


def channel_means_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["means"], axes=[2, 3], keepdims=0)],
        "channel_means",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("means", TensorProto.FLOAT, ["batch", 3])],
    )
    _save(graph, path)
    return path


def _archive(store: Path, file_name: str, name: str, version: str, handler: str, model: Path,
             extra: tuple[Path, ...] = ()) -> Path:
    """One archive in the store under `file_name` (versions of one model need their own names)."""
    folder = torch_model_archiver(model.parent / "out", name, version, handler, serialized=model, extra=extra)
    return folder.rename(store / file_name)


def model_store(root: Path) -> Path:
    """A model store with every archive this package's tests use."""
    store = root / "store"
    store.mkdir()
    simple = root / "adder"
    simple_onnx(simple / "model.onnx")
    _archive(store, "adder.mar", "adder", "1.0", "base_handler", simple / "model.onnx")
    _archive(store, "adder_v2.mar", "adder", "2.0", "base_handler", product_onnx(root / "product" / "model.onnx"))
    for file_name, name, version in (("adder_v3.mar", "adder", "3.0"), ("broken.mar", "broken", "1.0")):
        garbage = root / file_name / "model.onnx"
        garbage.parent.mkdir()
        garbage.write_bytes(b"not an ONNX model")
        _archive(store, file_name, name, version, "base_handler", garbage)
    labels = root / "colors" / "index_to_name.json"
    channel_means_onnx(labels.parent / "model.onnx")
    labels.write_text(json.dumps(COLORS))
    _archive(store, "colors.mar", "colors", "1.0", "image_classifier", labels.parent / "model.onnx", (labels,))
    return store


def archives(store: Path, *models: str, **options: Any) -> MarCatalog:
    """The archive catalog of `--model-store STORE --models MODELS...` (and other ArchiveOptions),
    built as server.py builds it."""
    catalog = from_options(ArchiveOptions(model_store=store, models=models, **options))
    assert catalog is not None
    return catalog


@contextlib.asynccontextmanager
async def archive_dataplane(store: Path, *models: str, repository: Path | None = None,
                            **options: Any) -> AsyncIterator[DataPlane]:
    """A running data plane over the startup archives `models` (and a Triton repository, if given)."""
    registry = archives(store, *models, **options)
    catalogs = [TritonRepositories([repository])] if repository is not None else []
    async with running_dataplane([*catalogs, registry], registry=registry) as dataplane:
        yield dataplane


def assert_error(response: httpx.Response, status: int, kind: str) -> dict:
    """TorchServe's error body: indented `{"code", "type", "message"}` and a newline."""
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == status and error["type"] == kind and error["message"]
    assert response.text.startswith('{\n  "code"') and response.text.endswith("}\n")
    return error


def client(app: Any) -> httpx.AsyncClient:
    """An httpx client of an ASGI app, in the test's event loop."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def background_work_done(dataplane: DataPlane) -> None:
    """Wait for what `synchronous=false` calls left running (the data plane keeps those tasks)."""
    while dataplane._background:
        await asyncio.gather(*list(dataplane._background), return_exceptions=True)


def batch_size(size: int, *names: str) -> dict[str, Any]:
    """ArchiveOptions for archives of `names` (version 1.0) batching `size` rows (config.properties `models`)."""
    return {"models_config": {name: {"1.0": {"batchSize": size}} for name in names}}


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()



def zip_bomb(path: Path, size: int, **entries: bytes) -> Path:
    """A .mar whose `model.onnx` is `size` zero bytes, deflated (about 229 to 1) as it is written,
    so the test never holds it; `entries` (a manifest) come first."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=2) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        with z.open("model.onnx", "w", force_zip64=True) as member:
            for left in range(size, 0, -_MiB):
                member.write(_ZEROS[:min(left, _MiB)])
    return path


def tar_bomb(path: Path, size: int, **entries: bytes) -> Path:
    """The same as a .tar.gz (torch-model-archiver's tgz layout: everything under one folder)."""
    with tarfile.open(path, "w:gz", compresslevel=2) as t:
        for name, data in entries.items():
            info = tarfile.TarInfo(f"bomb/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("bomb/model.onnx")
        info.size = size
        t.addfile(info, io.BufferedReader(_Zeros(size), _MiB))
    return path


_MiB = 1 << 20
_ZEROS = bytes(_MiB)


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read a chunk at a time."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = _ZEROS[:n] if n <= _MiB else bytes(n)
        self.left -= n
        return n
