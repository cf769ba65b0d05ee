"""The data plane over tiny real ONNX models: queries, lifecycles and their rollbacks, inference."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.inprocess import SIMPLE_CONFIG, doubler_onnx, running_dataplane, simple_onnx, tiny_repository, triton_dataplane
from triserve.core.catalog import Registration, Registry, Settings
from triserve.core.dataplane import MAX_SPLIT_PARTS, ModelNotFound, NotReady, VersionNotFound
from triserve.core.processors import Reply
from triserve.core.spec import ModelSpec
from triserve.core.types import InferRequest
from triserve.errors import Code, ServerError, StatusError, not_found
from triserve.repository.config import parse_pbtxt
from triserve.repository.triton import TritonRepositories

pytestmark = pytest.mark.anyio


def simple_request(batch: int) -> InferRequest:
    """INPUT0 row i is i, i+1, ...; INPUT1 is all ones: OUTPUT0 = INPUT0 + 1, OUTPUT1 = INPUT0 - 1."""
    first = np.arange(batch * 16, dtype=np.int32).reshape(batch, 16)
    return InferRequest({"INPUT0": first, "INPUT1": np.ones((batch, 16), np.int32)})


def with_broken_model(root: Path) -> Path:
    """The tiny repository plus `broken`, whose model file is not an ONNX graph."""
    tiny_repository(root)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    return root


class Labelled(TritonRepositories):
    """A Triton repository whose `simple` has two versions, named as TF Serving labels name them."""

    def aliases(self, name: str) -> dict[str, int]:
        return {"stable": 1, "canary": 2} if name == "simple" else {}

    def default_version(self, name: str) -> int | None:
        return 1 if name == "simple" else None


def two_versions(root: Path) -> Path:
    tiny_repository(root)
    simple_onnx(root / "simple" / "2" / "model.onnx")
    config = root / "simple" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    return root


# -- queries ------------------------------------------------------------------------------
async def test_names_index_and_status_of_loaded_models(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        assert dataplane.live() and dataplane.ready()
        assert dataplane.names() == ["doubler", "scores", "simple"]
        assert [(row.name, row.version, row.state) for row in dataplane.index()] == [
            ("doubler", "1", "READY"), ("scores", "1", "READY"), ("simple", "1", "READY"),
        ]
        status = dataplane.status("simple")
        assert (status.state, status.ready_versions) == ("READY", (1,))
        assert status.versions[1].state == "READY"
        with pytest.raises(ModelNotFound):
            dataplane.status("nope")


async def test_resolve_by_number_text_or_default(tmp_path):
    async with triton_dataplane(two_versions(tmp_path)) as dataplane:
        assert dataplane.resolve("simple").version == 2  # no default: the newest ready version
        assert dataplane.resolve("simple", "1").version == 1
        assert dataplane.resolve("simple", 1).version == 1
        assert dataplane.resolve("simple", "").version == 2
        assert [m.version for m in dataplane.versions("simple")] == [1, 2]
        with pytest.raises(NotReady) as e:
            dataplane.resolve("simple", "3")
        assert "version 3 is not at ready state" in e.value.message
        with pytest.raises(ServerError) as e:
            dataplane.resolve("simple", "latest")
        assert e.value.code == Code.INVALID_ARG and "is not a number" in e.value.message
        with pytest.raises(ModelNotFound):
            dataplane.resolve("nope")


async def test_aliases_name_versions_and_the_catalog_picks_the_default(tmp_path):
    async with running_dataplane([Labelled([two_versions(tmp_path)])]) as dataplane:
        assert dataplane.aliases("simple") == {"stable": 1, "canary": 2}
        assert dataplane.aliases("doubler") == {}
        assert dataplane.version_number("simple", "canary") == 2
        assert dataplane.version_number("simple", "2") == 2
        assert dataplane.version_number("simple", 7) == 7
        assert dataplane.version_number("simple", None) is None
        with pytest.raises(VersionNotFound) as e:
            dataplane.version_number("simple", "beta")
        assert e.value.code == Code.NOT_FOUND
        assert dataplane.default_version("simple") == 1
        assert dataplane.resolve("simple").version == 1  # the catalog's default, not the newest
        assert dataplane.resolve("simple", "canary").version == 2


async def test_stats_models_by_name_and_version(tmp_path):
    async with triton_dataplane(two_versions(tmp_path)) as dataplane:
        assert sorted((m.name, m.version) for m in dataplane.stats_models()) == [
            ("doubler", 1), ("scores", 1), ("simple", 1), ("simple", 2),
        ]
        assert [m.version for m in dataplane.stats_models("simple")] == [1, 2]
        assert [m.version for m in dataplane.stats_models("simple", "1")] == [1]
        with pytest.raises(ModelNotFound):
            dataplane.stats_models("nope")
        with pytest.raises(NotReady):
            dataplane.stats_models("simple", "3")


async def test_a_model_that_failed_to_load_is_not_ready_with_its_reason(tmp_path):
    async with triton_dataplane(with_broken_model(tmp_path)) as dataplane:
        status = dataplane.status("broken")
        assert status.state == "UNAVAILABLE" and status.reason
        assert status.versions[1].state == "UNAVAILABLE"  # the version the load was for
        with pytest.raises(NotReady) as e:
            dataplane.model("broken")
        assert e.value.code == Code.UNAVAILABLE and "has no available versions" in e.value.message
        assert status.reason in e.value.message
        assert not dataplane.ready()  # strict: every model asked to load must be ready
        assert dataplane.ready(strict=False)
        assert dataplane.resolve("simple").version == 1  # the others serve


async def test_relaxed_readiness_by_default_when_asked(tmp_path):
    async with triton_dataplane(with_broken_model(tmp_path), strict_readiness=False) as dataplane:
        assert dataplane.ready()
        assert not dataplane.ready(strict=True)


# -- lifecycle: the repository API -----------------------------------------------------------
async def test_explicit_mode_loads_what_is_asked_and_unloads(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path), control_mode="explicit", load_models=["simple"]) as dataplane:
        assert dataplane.status("doubler").state == ""  # known, never loaded
        with pytest.raises(ModelNotFound):
            dataplane.model("doubler")
        await dataplane.load("doubler")
        assert dataplane.model("doubler").version == 1
        await dataplane.unload("doubler")
        status = dataplane.status("doubler")
        assert (status.state, status.reason) == ("UNAVAILABLE", "unloaded")
        with pytest.raises(NotReady) as e:
            dataplane.model("doubler")
        assert "no available versions" in e.value.message
        assert dataplane.ready()  # an unloaded model does not count against readiness
        with pytest.raises(ServerError) as e:
            await dataplane.load("nope")
        assert e.value.code == Code.NOT_FOUND


async def test_load_and_unload_are_refused_outside_explicit_mode(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        for call in (dataplane.load("simple"), dataplane.unload("simple")):
            with pytest.raises(ServerError) as e:
                await call
            assert e.value.code == Code.UNAVAILABLE
            assert "explicit model load / unload is not allowed if polling is enabled" in e.value.message
            assert "model control mode is NONE" in e.value.message
        assert dataplane.model("simple").version == 1


async def test_a_failed_reload_keeps_the_old_version_serving(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path), control_mode="explicit", load_models=["simple"]) as dataplane:
        before = dataplane.model("simple")
        wrong = parse_pbtxt(tmp_path / "simple" / "config.pbtxt")
        wrong.input[0].name = "NOPE"  # the graph has no such input
        with pytest.raises(ServerError):
            await dataplane.load("simple", wrong)
        assert dataplane.model("simple") is before
        assert dataplane.status("simple").state == "READY"
        response = await dataplane.infer(before, simple_request(1))
        np.testing.assert_array_equal(response.outputs["OUTPUT0"], np.arange(16)[None] + 1)


async def test_a_config_override_takes_effect_on_load(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path), control_mode="explicit", load_models=["simple"]) as dataplane:
        config = parse_pbtxt(tmp_path / "simple" / "config.pbtxt")
        config.max_batch_size = 2
        await dataplane.load("simple", config)
        assert dataplane.model("simple").max_batch_size == 2


async def test_load_from_uploaded_files(tmp_path):
    model = tmp_path / "upload" / "model.onnx"
    simple_onnx(model)
    config = text_format.Parse(SIMPLE_CONFIG.replace('"simple"', '"uploaded"'), mc.ModelConfig())
    async with triton_dataplane(tiny_repository(tmp_path / "repo"), control_mode="explicit") as dataplane:
        await dataplane.load("uploaded", config, {"file:1/model.onnx": model.read_bytes()})
        uploaded = dataplane.model("uploaded")
        response = await dataplane.infer(uploaded, simple_request(2))
        np.testing.assert_array_equal(response.outputs["OUTPUT1"], simple_request(2).inputs["INPUT0"] - 1)
        with pytest.raises(ServerError) as e:
            await dataplane.load("evil", config, {"file:../1/model.onnx": model.read_bytes()})
        assert "inside the model folder" in e.value.message
        with pytest.raises(NotReady) as e:
            dataplane.model("evil")
        assert "inside the model folder" in e.value.reason


async def test_reconfigure_without_a_configurable_catalog_is_unsupported(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        with pytest.raises(ServerError) as e:
            await dataplane.reconfigure(object())
        assert e.value.code == Code.UNSUPPORTED and "--model-config-file" in e.value.message


# -- inference ------------------------------------------------------------------------------
async def test_infer_adds_and_subtracts(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        request = simple_request(3)
        response = await dataplane.infer(dataplane.resolve("simple"), request)
        assert (response.model_name, response.model_version) == ("simple", "1")
        np.testing.assert_array_equal(response.outputs["OUTPUT0"], request.inputs["INPUT0"] + 1)
        np.testing.assert_array_equal(response.outputs["OUTPUT1"], request.inputs["INPUT0"] - 1)


async def test_split_runs_a_batch_above_max_batch_size_in_parts_joined_in_order(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        model = dataplane.resolve("simple")
        request = simple_request(20)  # max_batch_size 8: 8 + 8 + 4
        with pytest.raises(ServerError) as e:
            dataplane.infer(model, request)
        assert "batch-size must be <= 8" in e.value.message
        response = await dataplane.infer(model, request, split=True)
        np.testing.assert_array_equal(response.outputs["OUTPUT0"], request.inputs["INPUT0"] + 1)
        np.testing.assert_array_equal(response.outputs["OUTPUT1"], request.inputs["INPUT0"] - 1)
        assert (model.stats.inference_count, model.stats.execution_count) == (20, 3)
        assert sorted(model.stats.batches) == [4, 8]


async def test_split_refuses_a_batch_needing_more_runs_than_one_request_may_queue(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        model = dataplane.resolve("simple")
        limit = MAX_SPLIT_PARTS * model.max_batch_size
        await dataplane.infer(model, simple_request(limit), split=True)
        assert model.stats.inference_count == limit
        with pytest.raises(ServerError) as e:
            dataplane.infer(model, simple_request(limit + 1), split=True)
        assert e.value.code == Code.INVALID_ARG
        assert f"at most {limit} per request" in e.value.message
        assert model.stats.inference_count == limit  # nothing of the refused request was queued


async def test_split_leaves_a_batch_that_fits_whole(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        model = dataplane.resolve("simple")
        await dataplane.infer(model, simple_request(8), split=True)
        assert model.stats.execution_count == 1


async def test_predict_runs_rows_through_the_tensor_processor_in_order(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        doubler = dataplane.resolve("doubler")  # max_batch_size 4 (auto-completed): 4 rows are one request
        rows = [{"body": f"[{i}, {i + 1}, {i + 2}]".encode()} for i in range(5)]
        answers = await dataplane.predict(doubler, rows[:4])
        assert all(isinstance(a, Reply) for a in answers)
        assert [a.value for a in answers] == [{"y": [2.0 * i, 2.0 * i + 2, 2.0 * i + 4]} for i in range(4)]
        assert (doubler.stats.inference_count, doubler.stats.execution_count) == (4, 1)
        with pytest.raises(ServerError) as e:
            await dataplane.predict(doubler, rows)  # more rows than the batch size: refused, nothing queued
        assert e.value.code == Code.INVALID_ARG and "5 rows" in e.value.message and "(4)" in e.value.message
        assert doubler.stats.inference_count == 4
        simple = dataplane.resolve("simple")
        (answer,) = await dataplane.predict(simple, [{"data": {"INPUT0": list(range(16)), "INPUT1": [1] * 16}}])
        assert answer.value == {"OUTPUT0": list(range(1, 17)), "OUTPUT1": list(range(-1, 15))}
        with pytest.raises(ServerError) as e:
            await dataplane.predict(doubler, [{"body": b"not json"}])
        assert e.value.code == Code.INVALID_ARG


# -- lifecycle: registered archives ------------------------------------------------------------
class Store(Registry):
    """A registry of tiny models. An archive URL "broken" holds a model file that is not a graph;
    any other holds the tiny doubler graph and names the model when the registration does not.
    Each registration has its own folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, dict[int, Registration]] = {}
        self.defaults: dict[str, int] = {}
        self.discarded: list[Registration] = []

    def names(self) -> list[str]:
        return sorted(n for n in self.models if self.workers(n) != 0)

    def read(self, name: str, config: mc.ModelConfig | None = None) -> ModelSpec:
        versions = self.models.get(name)
        if not versions:
            raise not_found(f"Model not found: {name}")
        if config is None:
            config = mc.ModelConfig(name=name, platform="onnxruntime_onnx")  # inputs and outputs auto-completed
            if self.workers(name):
                config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=self.workers(name))
        folders = {number: r.folder for number, r in versions.items() if r.folder is not None}
        return ModelSpec(name, folders[self.defaults[name]], config, folders)

    def registered(self) -> list[str]:
        return sorted(self.models)

    def registrations(self, name: str) -> dict[int, Registration]:
        return self.models[name]

    def prepare(self, url: str, model_name: str | None, params: dict[str, Any]) -> Registration:
        folder = Path(tempfile.mkdtemp(dir=self.root))
        if url == "broken":
            (folder / "model.onnx").write_bytes(b"not an onnx graph")
        else:
            doubler_onnx(folder / "model.onnx")
        settings = Settings(workers=params.get("workers"))
        return Registration(model_name or url, params.get("version", "1.0"), url, None, settings, folder=folder)

    def add(self, registration: Registration) -> int:
        versions = self.models.setdefault(registration.name, {})
        if registration.version in {r.version for r in versions.values()}:
            raise StatusError(f"version {registration.version} of {registration.name} is already registered", 409)
        number = max(versions, default=0) + 1
        versions[number] = registration
        self.defaults.setdefault(registration.name, number)
        return number

    def remove(self, name: str, version: str | None = None) -> list[Registration]:
        versions = self.models[name]
        numbers = list(versions) if version is None else [self.aliases(name)[version]]
        removed = [versions.pop(n) for n in numbers]
        if not versions:
            del self.models[name], self.defaults[name]
        elif self.defaults[name] not in versions:
            self.defaults[name] = min(versions)
        return removed

    def discard(self, registrations: list[Registration]) -> None:
        for registration in registrations:
            assert registration.folder is not None
            shutil.rmtree(registration.folder)
            self.discarded.append(registration)

    def workers(self, name: str) -> int | None:
        return self.models[name][self.defaults[name]].settings.workers

    def set_workers(self, name: str, workers: int) -> None:
        for registration in self.models[name].values():
            registration.settings.workers = workers

    def set_default(self, name: str, version: str) -> None:
        self.defaults[name] = self.aliases(name)[version]

    def aliases(self, name: str) -> dict[str, int]:
        return {r.version: number for number, r in self.models.get(name, {}).items()}

    def default_version(self, name: str) -> int | None:
        return self.defaults.get(name)


async def test_register_versions_and_choose_the_default(tmp_path):
    store = Store(tmp_path)
    async with running_dataplane([store], registry=store) as dataplane:
        first = await dataplane.register("doubler", "twice", {})
        assert (first.name, first.version) == ("twice", "1.0")
        assert dataplane.is_registered("twice") and dataplane.names() == ["twice"]
        response = await dataplane.infer(dataplane.resolve("twice"), InferRequest({"x": np.ones((1, 3), np.float32)}))
        np.testing.assert_array_equal(response.outputs["y"], [[2, 2, 2]])
        await dataplane.register("doubler", "twice", {"version": "2.0"})
        assert sorted(dataplane.registrations("twice")) == [1, 2]
        assert dataplane.aliases("twice") == {"1.0": 1, "2.0": 2}
        assert dataplane.resolve("twice").version == 1  # the first registered stays the default
        assert dataplane.resolve("twice", "2.0").version == 2
        dataplane.set_default("twice", "2.0")
        assert dataplane.default_version("twice") == 2 and dataplane.resolve("twice").version == 2


async def test_a_registration_whose_load_fails_is_removed_and_its_files_discarded(tmp_path):
    store = Store(tmp_path)
    async with running_dataplane([store], registry=store) as dataplane:
        with pytest.raises(StatusError) as e:
            await dataplane.register("broken", "bad", {})
        assert e.value.status == 500 and "Failed to start workers for model bad version: 1.0" in e.value.message
        assert not dataplane.is_registered("bad") and dataplane.names() == []
        with pytest.raises(ModelNotFound):
            dataplane.status("bad")
        (discarded,) = store.discarded
        assert discarded.name == "bad" and discarded.folder is not None and not discarded.folder.exists()


async def test_a_new_version_that_fails_leaves_the_registered_ones_serving(tmp_path):
    store = Store(tmp_path)
    async with running_dataplane([store], registry=store) as dataplane:
        await dataplane.register("doubler", "twice", {})
        serving = dataplane.resolve("twice")
        with pytest.raises(StatusError):
            await dataplane.register("broken", "twice", {"version": "2.0"})
        assert sorted(dataplane.registrations("twice")) == [1]
        assert dataplane.resolve("twice") is serving
        assert [r.version for r in store.discarded] == ["2.0"] and not store.discarded[0].folder.exists()


async def test_a_version_registered_twice_is_refused_and_its_files_discarded(tmp_path):
    store = Store(tmp_path)
    async with running_dataplane([store], registry=store) as dataplane:
        await dataplane.register("doubler", "twice", {})
        with pytest.raises(StatusError) as e:
            await dataplane.register("doubler", "twice", {})
        assert e.value.status == 409
        assert sorted(dataplane.registrations("twice")) == [1]
        (discarded,) = store.discarded
        assert not discarded.folder.exists()


async def test_a_repository_model_name_cannot_be_registered_or_unregistered(tmp_path):
    store = Store(tmp_path / "store")
    (tmp_path / "store").mkdir()
    catalogs = [TritonRepositories([tiny_repository(tmp_path / "repo")]), store]
    async with running_dataplane(catalogs, registry=store) as dataplane:
        with pytest.raises(StatusError) as e:
            await dataplane.register("doubler", "simple", {})
        assert e.value.status == 409 and "already served from a model repository" in e.value.message
        assert store.models == {} and store.discarded == []  # refused before anything was fetched
        with pytest.raises(StatusError) as e:
            await dataplane.register("simple", None, {})  # the archive names itself `simple`
        assert e.value.status == 409
        assert store.models == {} and [r.name for r in store.discarded] == ["simple"]
        assert not store.discarded[0].folder.exists()
        assert dataplane.resolve("simple").platform == "onnxruntime_onnx"
        with pytest.raises(ServerError) as e:
            await dataplane.unregister("simple")
        assert e.value.code == Code.INVALID_ARG and "repository API" in e.value.message
        with pytest.raises(ModelNotFound):
            await dataplane.unregister("nope")
        with pytest.raises(VersionNotFound):
            dataplane.set_default("simple", "1.0")
        with pytest.raises(ModelNotFound):
            dataplane.set_default("nope", "1.0")


async def test_scale_to_zero_keeps_the_model_registered_and_back_up_starts_it(tmp_path):
    store = Store(tmp_path)
    async with running_dataplane([store], registry=store) as dataplane:
        await dataplane.register("doubler", "twice", {"workers": 1})
        await dataplane.scale("twice", 0)
        assert dataplane.is_registered("twice") and dataplane.names() == ["twice"]
        assert dataplane.workers("twice") == 0
        status = dataplane.status("twice")
        assert (status.state, status.reason) == ("UNAVAILABLE", "0 workers")
        with pytest.raises(NotReady) as e:
            dataplane.model("twice")
        assert "0 workers" in e.value.message
        await dataplane.scale("twice", 3)
        assert dataplane.workers("twice") == 3
        assert dataplane.model("twice").instance_count == 3
        with pytest.raises(ModelNotFound):
            await dataplane.scale("nope", 1)


async def test_scale_a_repository_model_reloads_it_with_that_many_instances(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        assert dataplane.model("simple").instance_count == 1
        await dataplane.scale("simple", 2)
        assert dataplane.model("simple").instance_count == 2


async def test_unregister_one_version_then_all(tmp_path):
    store = Store(tmp_path)
    async with running_dataplane([store], registry=store) as dataplane:
        await dataplane.register("doubler", "twice", {})
        await dataplane.register("doubler", "twice", {"version": "2.0"})
        await dataplane.unregister("twice", "2.0")
        assert sorted(dataplane.registrations("twice")) == [1]
        assert [m.version for m in dataplane.versions("twice")] == [1]
        await dataplane.unregister("twice")
        assert not dataplane.is_registered("twice") and dataplane.names() == []
        with pytest.raises(ModelNotFound):
            dataplane.model("twice")
        assert [r.version for r in store.discarded] == ["2.0", "1.0"]
        assert not any(r.folder.exists() for r in store.discarded)


async def test_registering_without_a_registry_is_refused(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        with pytest.raises(ServerError) as e:
            await dataplane.register("doubler", "twice", {})
        assert "--model-store" in e.value.message


@pytest.mark.anyio
async def test_scaling_beyond_the_instance_cap_is_refused_and_the_model_keeps_serving(tmp_path):
    from triserve.core.instances import MAX_INSTANCES

    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        with pytest.raises(ServerError) as refused:
            await dataplane.scale("simple", 1_000_000_000)
        assert refused.value.code == Code.INVALID_ARG and f"at most {MAX_INSTANCES}" in refused.value.message
        assert dataplane.resolve("simple").instance_count == 1  # the old instances still serve
