"""What a model replica tells the ingress: a snapshot of its models (those Ray cannot serve shown
UNAVAILABLE with the reason), and errors carried back with their class, code and fields."""

from __future__ import annotations

import pickle

import pytest

from tests.inprocess import sequence_repository, tiny_repository, triton_dataplane
from tests.integrations.ray.test_remote import Replica, client
from triserve.core.dataplane import ModelNotFound
from triserve.errors import Code, StatusError
from triserve.integrations.ray.remote import RemoteDataPlane
from triserve.integrations.ray.routes import ingress_app
from triserve.integrations.ray.snapshot import NOT_THROUGH_RAY, Failure, take


@pytest.mark.anyio
async def test_a_snapshot_has_every_ready_version_with_its_config(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        snapshot = pickle.loads(pickle.dumps(take(dataplane)))
        assert snapshot.ready and snapshot.names == ("doubler", "scores", "simple")
        assert set(snapshot.models["simple"]) == {1}
        assert snapshot.models["simple"][1].config == dataplane.model("simple").config.SerializeToString()
        assert snapshot.models["scores"][1].labels == dataplane.model("scores").labels
        assert [r.state for r in snapshot.index] == ["READY"] * 3


def test_replica_errors_keep_their_class_code_and_fields_through_pickling():
    for error in (ModelNotFound("m"), StatusError("busy", 503, "ServiceUnavailableException")):
        back = pickle.loads(pickle.dumps(Failure.of(error))).error()
        assert type(back) is type(error) and back.message == error.message and back.code == error.code
        assert str(back) == error.message and vars(back) == vars(error)
    assert Failure.of(StatusError("x", 507)).error().status == 507 and ModelNotFound("m").code == Code.NOT_FOUND


@pytest.mark.anyio
async def test_models_that_cannot_be_served_through_ray_are_unavailable_with_the_reason(tmp_path):
    async with triton_dataplane(sequence_repository(tmp_path)) as dataplane:
        snapshot = take(dataplane)
        remote = RemoteDataPlane(snapshot, Replica(dataplane))
        assert not snapshot.models and not remote.ready()
        async with client(ingress_app(remote)) as ingress:
            index = (await ingress.post("/v2/repository/index")).json()
            assert {row["state"] for row in index} == {"UNAVAILABLE"}
            assert {row["reason"] for row in index} == {NOT_THROUGH_RAY["sequence"]}
            answer = await ingress.post("/v2/models/accumulate/infer", json={"inputs": []})
            assert answer.status_code == 503 and NOT_THROUGH_RAY["sequence"] in answer.json()["error"]
            assert (await ingress.get("/v2/health/ready")).status_code == 503


@pytest.mark.anyio
async def test_a_multiplexed_replicas_snapshot_shows_models_it_loaded_once_as_servable(tmp_path):
    """merge(): what a multiplexed replica reports. A model it loaded once is servable (it loads
    again on demand), shown as it was then; a model that failed to load shows why, and the
    snapshot is not ready."""
    from triserve.integrations.ray.snapshot import merge

    repo = tiny_repository(tmp_path)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
    async with triton_dataplane(repo, control_mode="explicit", load_models=[]) as dataplane:
        known = {}
        for name in ("simple", "doubler"):
            await dataplane.load(name)
            known[name] = take(dataplane)
        await dataplane.unload("simple")  # evicted: still servable through the application
        merged = pickle.loads(pickle.dumps(merge(take(dataplane), known)))
        assert set(merged.models) == {"simple", "doubler"} and merged.ready
        assert merged.models["simple"][1].config == known["simple"].models["simple"][1].config
        states = {(r.name, r.version): r.state for r in merged.index}
        assert states[("simple", "1")] == states[("doubler", "1")] == "READY"
        assert merged.statuses["simple"].state == "READY" and not states.get(("scores", "1"), "").startswith("READY")
        with pytest.raises(Exception):
            await dataplane.load("broken")
        failed = merge(take(dataplane), known, ("broken",))
        assert not failed.ready and failed.statuses["broken"].state == "UNAVAILABLE" and failed.statuses["broken"].reason
        remote = RemoteDataPlane(merged, Replica(dataplane))
        assert remote.model("simple").config.name == "simple" and remote.ready()
