"""The ingress's data plane without a cluster: the protocol packages' own apps over a
RemoteDataPlane give the same bytes as over the real data plane; a replica that dies under a
request is retried on another (and, with retries off, answered 503); errors keep their codes;
lifecycle calls are refused with the reason. The replica side is the real replica class
(deployments.Models) over a real data plane, called in-process."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.inprocess import tiny_repository, triton_dataplane
from triserve.integrations.ray.remote import MANAGED_BY_SERVE, RemoteDataPlane
from triserve.integrations.ray.routes import ingress_app
from triserve.integrations.ray.snapshot import take
from triserve.shared_listener import single_port_router


class Died(Exception):
    """Stands in for Ray's ActorDiedError (the retry is the point here)."""


class Replica:
    """remote.Backend over the real replica class in this process; `die` calls raise Died first."""

    def __init__(self, dataplane, die: int = 0) -> None:
        from triserve.integrations.ray.deployments import Models

        self.replica = Models.func_or_class.__new__(Models.func_or_class)  # its __init__ builds from flags
        self.replica.dataplane = dataplane
        self.replica.started = [n for n in dataplane.names() if dataplane.versions(n)]
        self.die = die
        self.calls = 0

    async def infer(self, name, version, request, split):
        return await self._call(self.replica.infer(name, version, request, split))

    async def predict(self, name, version, rows):
        return await self._call(self.replica.predict(name, version, rows))

    async def _call(self, work):
        self.calls += 1
        if self.die:
            self.die -= 1
            work.close()
            raise Died()
        return await work


def single_port_app(dataplane):
    from triserve.protocols.kserve.rest import V2HTTP
    from triserve.protocols.tfserving.rest import TFServingREST
    from triserve.protocols.torchserve.inference import TorchServeInference

    return single_port_router({"http": V2HTTP(dataplane).app(), "tfserving_rest": TFServingREST(dataplane).app(),
                               "torchserve_inference": TorchServeInference(dataplane).app(), "metrics": None})


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


V2 = {"inputs": [{"name": "INPUT0", "shape": [2, 16], "datatype": "INT32", "data": list(range(32))},
                 {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32", "data": [1] * 32}]}
BINARY = (np.arange(16, dtype=np.int32).tobytes(), np.full(16, 5, dtype=np.int32).tobytes())
HEADER = (b'{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"INT32","parameters":{"binary_data_size":64}},'
          b'{"name":"INPUT1","shape":[1,16],"datatype":"INT32","parameters":{"binary_data_size":64}}],'
          b'"parameters":{"binary_data_output":true}}')
CALLS = [
    ("POST", "/v2/models/simple/infer", {"json": V2}),
    ("POST", "/v2/models/simple/versions/1/infer", {"json": {**V2, "id": "x"}}),
    ("POST", "/v2/models/simple/infer", {"content": HEADER + b"".join(BINARY),
                                          "headers": {"Inference-Header-Content-Length": str(len(HEADER))}}),
    ("POST", "/v2/models/scores/infer", {"json": {"inputs": [{"name": "INPUT", "shape": [1, 5], "datatype": "FP32",
                                                              "data": [0.1, 0.5, 0.2, 0.9, 0.3]}],
                                                  "outputs": [{"name": "OUTPUT", "parameters": {"classification": 2}}]}}),
    ("POST", "/v2/models/doubler/infer", {"json": {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                                               "data": [1, 2, 3]}]}}),
    ("GET", "/v2/models/simple", {}),
    ("GET", "/v2/models/simple/versions/1/ready", {}),
    ("GET", "/v2/models/simple/versions/9/ready", {}),
    ("GET", "/v2/models/doubler/config", {}),
    ("GET", "/v2/health/ready", {}),
    ("POST", "/v2/repository/index", {}),
    ("POST", "/v1/models/doubler:predict", {"json": {"instances": [[1.0, 2.0, 3.0]]}}),
    ("GET", "/v1/models/simple", {}),
    ("POST", "/predictions/doubler", {"json": {"x": [1.0, 2.0, 3.0]}}),
    ("POST", "/v2/models/nope/infer", {"json": V2}),
    ("POST", "/v2/models/simple/infer", {"json": {"inputs": V2["inputs"][:1]}}),
    ("POST", "/v2/models/simple/infer", {"json": {"inputs": [{**V2["inputs"][0], "shape": [9, 16], "data": list(range(144))},
                                                             {**V2["inputs"][1], "shape": [9, 16], "data": [1] * 144}]}}),
    ("POST", "/v2/models/simple/infer", {"content": b"{nope"}),
]


@pytest.mark.anyio
async def test_the_ingress_answers_byte_for_byte_what_the_single_process_server_answers(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        remote = RemoteDataPlane(take(dataplane), Replica(dataplane))
        async with client(single_port_app(dataplane)) as direct, client(ingress_app(remote)) as ingress:
            for method, path, kwargs in CALLS:
                want = await direct.request(method, path, **kwargs)
                got = await ingress.request(method, path, **kwargs)
                assert (got.status_code, got.content) == (want.status_code, want.content), (method, path)
                assert got.headers.get("content-type") == want.headers.get("content-type")
            assert (await direct.post(*CALLS[0][1:2], **CALLS[0][2])).status_code == 200


@pytest.mark.anyio
async def test_inference_whose_replica_died_is_sent_again(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        backend = Replica(dataplane, die=2)
        remote = RemoteDataPlane(take(dataplane), backend, retryable=(Died,), retries=3)
        async with client(ingress_app(remote)) as ingress:
            answer = await ingress.post("/v2/models/simple/infer", json=V2)
            assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [i + 1 for i in range(32)]
            assert (backend.calls, remote.retried) == (3, 2)
            backend.die = 1
            assert (await ingress.post("/predictions/doubler", json={"x": [1.0, 2.0, 3.0]})).json() == {"y": [2.0, 4.0, 6.0]}


@pytest.mark.anyio
async def test_with_retries_off_a_dead_replica_is_a_503_in_the_protocols_words(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        backend = Replica(dataplane, die=1)
        remote = RemoteDataPlane(take(dataplane), backend, retryable=(Died,), retries=0)
        async with client(ingress_app(remote)) as ingress:
            answer = await ingress.post("/v2/models/simple/infer", json=V2)
            assert answer.status_code == 503
            assert answer.json() == {"error": "the model replica serving the request died; try again"}
            tf = await ingress.post("/v1/models/doubler:predict", json={"instances": [[1.0, 2.0, 3.0]]})
            assert tf.status_code == 200  # the next request reaches a live replica


@pytest.mark.anyio
async def test_lifecycle_is_serves_and_the_refusal_says_so(tmp_path):
    async with triton_dataplane(tiny_repository(tmp_path)) as dataplane:
        remote = RemoteDataPlane(take(dataplane), Replica(dataplane))
        async with client(ingress_app(remote)) as ingress:
            for path in ("/v2/repository/models/simple/load", "/v2/repository/models/simple/unload"):
                answer = await ingress.post(path)
                assert answer.status_code == 503 and MANAGED_BY_SERVE in answer.json()["error"]
            metrics = await ingress.get("/metrics")
            assert metrics.status_code == 404 and "Ray" in metrics.json()["error"]
