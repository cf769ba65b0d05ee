"""Ensembles (core/ensemble.py): checked at load, run as a graph, loaded and unloaded with the
models they use."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.inprocess import tiny_repository, triton_dataplane
from triserve.core.ensemble import EnsembleScheduler
from triserve.core.stats import ModelStats
from triserve.core.types import InferRequest, InferResponse
from triserve.protocols.kserve.rest import V2HTTP

pytestmark = pytest.mark.anyio


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1{maps} }}'


def _ensemble(root: Path, name: str, steps: list[str], inputs: str = "", outputs: str = "", batch: int = 8) -> None:
    inputs = inputs or ('input [{ name: "X" data_type: TYPE_INT32 dims: [ 16 ] },'
                        ' { name: "Y" data_type: TYPE_INT32 dims: [ 16 ] }]')
    outputs = outputs or ('output [{ name: "OUT_SUM" data_type: TYPE_INT32 dims: [ 16 ] },'
                          ' { name: "OUT_DIFF" data_type: TYPE_INT32 dims: [ 16 ] },'
                          ' { name: "D1" data_type: TYPE_INT32 dims: [ 16 ] }]')
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(textwrap.dedent(f'''
        name: "{name}"
        platform: "ensemble"
        max_batch_size: {batch}
        {inputs}
        {outputs}
        ensemble_scheduling {{ step [ {", ".join(steps)} ] }}
    '''))


# The last step first: the graph, not the list order, decides what runs when.
# s1 = X + Y, D1 = X - Y and s2 = Y + Y run in parallel; then OUT_SUM = s1 + s2, OUT_DIFF = s1 - s2.
THREE_STEPS = [
    _step("simple", {"INPUT0": "s1", "INPUT1": "s2"}, {"OUTPUT0": "OUT_SUM", "OUTPUT1": "OUT_DIFF"}),
    _step("simple", {"INPUT0": "X", "INPUT1": "Y"}, {"OUTPUT0": "s1", "OUTPUT1": "D1"}),
    _step("simple", {"INPUT0": "Y", "INPUT1": "Y"}, {"OUTPUT0": "s2"}),
]


def _repository(root: Path) -> Path:
    tiny_repository(root)
    _ensemble(root, "ens", THREE_STEPS)
    return root


async def test_three_steps_two_in_parallel_answer_as_the_models_called_one_by_one(tmp_path):
    x = np.arange(32, dtype=np.int32).reshape(2, 16)
    y = (np.arange(32, dtype=np.int32) * 3 - 7).reshape(2, 16)
    async with triton_dataplane(_repository(tmp_path)) as dataplane:
        assert dataplane.status("ens").state == "READY", dataplane.status("ens").reason
        simple = dataplane.model("simple")
        first = await dataplane.infer(simple, InferRequest({"INPUT0": x, "INPUT1": y}))
        second = await dataplane.infer(simple, InferRequest({"INPUT0": y, "INPUT1": y}))
        third = await dataplane.infer(simple, InferRequest({
            "INPUT0": first.outputs["OUTPUT0"], "INPUT1": second.outputs["OUTPUT0"]}))

        transport = httpx.ASGITransport(app=V2HTTP(dataplane).app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post("/v2/models/ens/infer", json={"inputs": [
                {"name": "X", "shape": [2, 16], "datatype": "INT32", "data": x.reshape(-1).tolist()},
                {"name": "Y", "shape": [2, 16], "datatype": "INT32", "data": y.reshape(-1).tolist()},
            ]})
            assert r.status_code == 200, r.text
            outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}
            np.testing.assert_array_equal(outputs["OUT_SUM"], third.outputs["OUTPUT0"])
            np.testing.assert_array_equal(outputs["OUT_DIFF"], third.outputs["OUTPUT1"])
            np.testing.assert_array_equal(outputs["D1"], first.outputs["OUTPUT1"])
            np.testing.assert_array_equal(outputs["OUT_SUM"], x + 3 * y)

            metadata = (await client.get("/v2/models/ens")).json()
            assert metadata["platform"] == "ensemble"
            assert [t["name"] for t in metadata["inputs"]] == ["X", "Y"]
            config = (await client.get("/v2/models/ens/config")).json()
            assert len(config["ensemble_scheduling"]["step"]) == 3

            # A bad request is refused by the ensemble's own input check, as for any model.
            r = await client.post("/v2/models/ens/infer", json={"inputs": [
                {"name": "X", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}]})
            assert r.status_code == 400 and "missing required input" in r.json()["error"]

            stats = (await client.get("/v2/models/ens/stats")).json()["model_stats"][0]
            assert stats["inference_stats"]["success"]["count"] == 1
        # Each step is a request to its model: three by hand, three from the ensemble.
        assert simple.stats.success.count == 6


class _Gated:
    """A composing model whose answers wait on a gate: shows which steps started together."""

    def __init__(self, started: list[str], gate: asyncio.Event, name: str) -> None:
        self.started, self.gate, self.name = started, gate, name
        self.max_batch_size = 0

    def infer(self, request: InferRequest):
        self.started.append(self.name)

        async def answer() -> InferResponse:
            await self.gate.wait()
            value = sum(request.inputs.values())
            return InferResponse(self.name, "1", "", {"OUT": value})

        return answer()


async def test_independent_steps_start_together_and_the_dependent_one_waits_for_both():
    config = parse_pbtxt_text('''
        name: "g" platform: "ensemble"
        input [{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }]
        output [{ name: "Z" data_type: TYPE_INT32 dims: [ 1 ] }]
        ensemble_scheduling { step [
          { model_name: "c" input_map { key: "A" value: "a" } input_map { key: "B" value: "b" } output_map { key: "OUT" value: "Z" } },
          { model_name: "a" input_map { key: "A" value: "X" } output_map { key: "OUT" value: "a" } },
          { model_name: "b" input_map { key: "A" value: "X" } output_map { key: "OUT" value: "b" } }
        ] }
    ''')
    started: list[str] = []
    gate = asyncio.Event()
    models = {n: _Gated(started, gate, n) for n in "abc"}
    scheduler = EnsembleScheduler(config, lambda name, version: models[name], ModelStats("g", 1), ["Z"])
    pending = scheduler.enqueue({"X": np.array([5], np.int32)}, 0)
    while len(started) < 2:
        await asyncio.sleep(0)
    assert sorted(started) == ["a", "b"]  # both at once, before either answered; c not yet
    gate.set()
    outputs = await scheduler.wait(pending)
    assert started[-1] == "c" and outputs["Z"].tolist() == [10]
    assert scheduler.stats.success.count == 1 and scheduler.stats.pending == 0


def parse_pbtxt_text(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


BROKEN = {
    "unknown_model": ([_step("nowhere", {"INPUT0": "X"}, {"OUTPUT0": "OUT_SUM"})], "nowhere"),
    "wrong_type": ([_step("scores", {"INPUT": "X"}, {"OUTPUT": "OUT_SUM"})], "expects FP32"),
    "no_such_input": ([_step("simple", {"INPUT9": "X", "INPUT0": "X", "INPUT1": "Y"}, {"OUTPUT0": "OUT_SUM"})],
                      "maps input 'INPUT9'"),
    "tensor_cycle": ([_step("simple", {"INPUT0": "X", "INPUT1": "t2"}, {"OUTPUT0": "t1"}),
                      _step("simple", {"INPUT0": "t1", "INPUT1": "Y"}, {"OUTPUT0": "t2", "OUTPUT1": "OUT_SUM"})],
                     "(a cycle)"),
    "unproduced": ([_step("simple", {"INPUT0": "X", "INPUT1": "Y"}, {"OUTPUT0": "OUT_SUM"})],
                   "no step produces ensemble output"),
    "loop_a": ([_step("loop_b", {"X": "X", "Y": "Y"}, {"OUT_SUM": "OUT_SUM"})], "cycle"),
    "loop_b": ([_step("loop_a", {"X": "X", "Y": "Y"}, {"OUT_SUM": "OUT_SUM"})], "cycle"),
}


async def test_ensembles_that_cannot_run_fail_to_load_with_the_reason(tmp_path):
    tiny_repository(tmp_path)
    one_output = 'output [{ name: "OUT_SUM" data_type: TYPE_INT32 dims: [ 16 ] }]'
    for name, (steps, _) in BROKEN.items():
        outputs = "" if name == "unproduced" else one_output
        _ensemble(tmp_path, name, steps, outputs=outputs, batch=4)
    # a shape that does not fit: scores takes [5] floats, the ensemble gives [16]
    _ensemble(tmp_path, "wrong_shape", [_step("scores", {"INPUT": "X"}, {"OUTPUT": "OUT_SUM"})],
              inputs='input [{ name: "X" data_type: TYPE_FP32 dims: [ 16 ] }]',
              outputs='output [{ name: "OUT_SUM" data_type: TYPE_FP32 dims: [ 5 ] }]', batch=4)
    # composing models must take the ensemble's batches: scores takes at most 4
    _ensemble(tmp_path, "too_big", [_step("scores", {"INPUT": "X"}, {"OUTPUT": "OUT_SUM"})],
              inputs='input [{ name: "X" data_type: TYPE_FP32 dims: [ 5 ] }]',
              outputs='output [{ name: "OUT_SUM" data_type: TYPE_FP32 dims: [ 5 ] }]', batch=8)
    async with triton_dataplane(tmp_path) as dataplane:
        for name, (_, reason) in {**BROKEN, "wrong_shape": (None, "expects [-1, 5]"),
                               "too_big": (None, "has max_batch_size 4")}.items():
            status = dataplane.status(name)
            assert status.state == "UNAVAILABLE", name
            assert reason in status.reason, (name, status.reason)
        assert dataplane.status("simple").state == "READY"


async def test_loading_an_ensemble_loads_its_models_and_unloading_respects_dependencies(tmp_path):
    async with triton_dataplane(_repository(tmp_path), control_mode="explicit") as dataplane:
        await dataplane.load("ens")
        assert dataplane.status("ens").state == "READY"
        assert dataplane.status("simple").state == "READY"  # loaded first, as a composing model
        await dataplane.unload("simple")
        # the ensemble cannot run without it: unloaded too, never READY and failing
        assert dataplane.status("ens").state == "UNAVAILABLE"
        await dataplane.load("ens")
        assert dataplane.status("simple").state == "READY"
        await dataplane.unload("ens", unload_dependents=True)
        assert dataplane.status("ens").state == "UNAVAILABLE"
        assert dataplane.status("simple").state == "UNAVAILABLE"
