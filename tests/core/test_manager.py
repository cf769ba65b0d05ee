"""The model manager's poll mode, driven one poll at a time, and its close."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import AsyncIterator

import numpy as np
import pytest

from tests.inprocess import doubler_onnx, tiny_repository
from triserve import datatypes
from triserve.core.manager import ModelManager
from triserve.core.model import Model
from triserve.core.types import InferRequest
from triserve.errors import Code, ServerError
from triserve.repository.triton import TritonRepositories
from triserve.repository.uploads import UploadedModels

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def polling(*repositories: Path) -> AsyncIterator[ModelManager]:
    """A poll-mode manager over one catalog per repository, started as the server starts it."""
    manager = ModelManager([TritonRepositories([r]) for r in repositories], "poll", UploadedModels())
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()


def ready(manager: ModelManager) -> dict[str, list[int]]:
    return {name: sorted(entry.versions) for name, entry in manager.entries.items() if entry.versions}


def zeros(model: Model) -> InferRequest:
    """A request of one zero row for every input of the model."""
    return InferRequest({
        t.name: np.zeros([1, *t.dims], datatypes.numpy_of_config(t.data_type)) for t in model.config.input
    })


async def double(manager: ModelManager, name: str) -> list[float]:
    model = manager.entries[name].versions[1]
    response = await model.infer(InferRequest({"x": np.array([[1, 2, 3]], np.float32)}))
    return response.outputs["y"][0].tolist()


async def test_a_new_model_folder_loads_at_the_next_poll(tmp_path):
    async with polling(tiny_repository(tmp_path)) as manager:
        assert ready(manager) == {"doubler": [1], "scores": [1], "simple": [1]}
        doubler_onnx(tmp_path / "again" / "1" / "model.onnx")
        await manager.poll()
        assert ready(manager)["again"] == [1]
        assert await double(manager, "again") == [2, 4, 6]


async def test_a_changed_model_reloads_and_an_unchanged_one_stays(tmp_path):
    async with polling(tiny_repository(tmp_path)) as manager:
        simple, doubler = manager.entries["simple"].versions[1], manager.entries["doubler"].versions[1]
        config = tmp_path / "simple" / "config.pbtxt"
        config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 16"))
        await manager.poll()
        reloaded = manager.entries["simple"].versions[1]
        assert reloaded is not simple and reloaded.max_batch_size == 16
        assert manager.entries["doubler"].versions[1] is doubler
        with pytest.raises(ServerError) as e:
            simple.infer(zeros(simple))
        assert "being unloaded" in e.value.message  # the retired version was closed


async def test_a_new_version_folder_reloads_the_model(tmp_path):
    async with polling(tiny_repository(tmp_path)) as manager:
        doubler_onnx(tmp_path / "doubler" / "2" / "model.onnx")
        await manager.poll()
        assert ready(manager)["doubler"] == [2]  # the default policy serves the newest version
        assert manager.entries["doubler"].version_states[1] == ("UNAVAILABLE", "unloaded")


async def test_a_change_that_fails_to_load_keeps_the_old_version_serving(tmp_path):
    async with polling(tiny_repository(tmp_path)) as manager:
        serving = manager.entries["doubler"].versions[1]
        (tmp_path / "doubler" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
        await manager.poll()
        assert manager.entries["doubler"].versions[1] is serving
        assert await double(manager, "doubler") == [2, 4, 6]


async def test_a_removed_model_folder_unloads(tmp_path):
    async with polling(tiny_repository(tmp_path)) as manager:
        scores = manager.entries["scores"].versions[1]
        shutil.rmtree(tmp_path / "scores")
        await manager.poll()
        assert "scores" not in manager.entries
        assert sorted(ready(manager)) == ["doubler", "simple"]
        with pytest.raises(ServerError) as e:
            scores.infer(zeros(scores))
        assert e.value.code == Code.UNAVAILABLE


async def test_a_poll_of_one_catalog_leaves_the_others_alone(tmp_path):
    first, second = tiny_repository(tmp_path / "a"), tmp_path / "b"
    doubler_onnx(second / "other" / "1" / "model.onnx")
    async with polling(first, second) as manager:
        shutil.rmtree(second / "other")
        await manager.poll(manager.catalogs[:1])
        assert "other" in ready(manager)
        await manager.poll()
        assert "other" not in manager.entries


async def test_a_repository_that_cannot_be_read_changes_nothing(tmp_path):
    async with polling(tiny_repository(tmp_path / "repo")) as manager:
        (tmp_path / "repo").rename(tmp_path / "gone")
        await manager.poll()  # logged; the models keep serving
        assert sorted(ready(manager)) == ["doubler", "scores", "simple"]


async def test_close_unloads_every_model(tmp_path):
    manager = ModelManager([TritonRepositories([tiny_repository(tmp_path)])], "poll", UploadedModels())
    await manager.start()
    models = manager.models()
    assert len(models) == 3
    await manager.close()
    assert manager.models() == [] and ready(manager) == {}
    for model in models:
        with pytest.raises(ServerError) as e:
            model.infer(zeros(model))
        assert "being unloaded" in e.value.message
