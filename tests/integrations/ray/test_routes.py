"""The ingress's routes keep the body limits the replicas' `triserve serve` flags set."""

from __future__ import annotations

import pytest

from tests.inprocess import tiny_repository, triton_dataplane
from tests.integrations.ray.test_remote import V2, Replica, client
from triserve.integrations.ray.deployments import _options
from triserve.integrations.ray.remote import RemoteDataPlane
from triserve.integrations.ray.routes import ingress_app
from triserve.integrations.ray.snapshot import take
from triserve.protocols.kserve.rest import V2HTTP


@pytest.mark.anyio
async def test_a_body_over_http_max_input_size_is_refused_as_triserve_serve_refuses_it(tmp_path):
    repo = tiny_repository(tmp_path)
    options = _options(["--model-repository", str(repo), "--http-max-input-size", "200"])
    async with triton_dataplane(repo) as dataplane:
        remote = RemoteDataPlane(take(dataplane), Replica(dataplane))
        async with client(ingress_app(remote, options)) as ingress, client(V2HTTP(dataplane, 200).app()) as direct:
            want = await direct.post("/v2/models/simple/infer", json=V2)
            got = await ingress.post("/v2/models/simple/infer", json=V2)
            assert want.status_code == 400 and (got.status_code, got.content) == (want.status_code, want.content)
        async with client(ingress_app(remote)) as ingress:  # the default limit
            assert (await ingress.post("/v2/models/simple/infer", json=V2)).status_code == 200
