"""TorchServe's token authorization in-process: the key file, bearer keys on the inference and
management APIs (the metrics API stays open), and `/token` replacing a key."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.protocols.torchserve.support import ROW, archive_dataplane, assert_error, client
from triserve.options import ServerOptions, TorchServeOptions
from triserve.protocols.torchserve import inference, management, metrics
from triserve.protocols.torchserve.auth import FAILED, TokenAuth, auth_for

pytestmark = pytest.mark.anyio


def options(key_file: Path, enable_token_auth: bool = True) -> ServerOptions:
    return ServerOptions(torchserve=TorchServeOptions(enable_token_auth=enable_token_auth, token_key_file=key_file,
                                                      enable_model_api=True))


def apps(dataplane, server: ServerOptions) -> tuple:
    """The ASGI apps the TorchServe front ends serve, as the server builds them."""
    return tuple(module.frontend(dataplane, server, 0).server.config.app for module in (inference, management, metrics))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_key_file_is_private_and_holds_three_keys(tmp_path):
    auth = TokenAuth(tmp_path / "key_file.json", expiration_min=60)
    path = tmp_path / "key_file.json"
    keys = json.loads(path.read_text())
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert set(keys) == {"management", "inference", "API"}
    assert all(len(k["key"]) == 8 for k in keys.values())  # as TorchServe's keys
    assert keys["inference"]["expiration time"].endswith("Z") and "expiration time" not in keys["API"]
    assert len({k["key"] for k in keys.values()}) == 3
    assert auth.check("inference", f"Bearer {keys['inference']['key']}")
    assert not auth.check("inference", f"Bearer {keys['management']['key']}")


def test_the_key_file_stays_private_when_it_existed_before(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text("{}")
    path.chmod(0o644)
    TokenAuth(path, expiration_min=60)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_bearer_header_forms_and_expired_keys(tmp_path):
    auth = TokenAuth(tmp_path / "key_file.json", expiration_min=60)
    key = auth.keys["inference"][0]
    assert auth.check("inference", f"Bearer   {key}")
    assert not auth.check("inference", None)
    assert not auth.check("inference", key)  # no scheme
    assert not auth.check("inference", f"Basic {key}")
    assert not auth.check("inference", f"Bearer {key}x")
    auth.keys["inference"] = (key, time.time() - 1)  # as an hour later
    assert not auth.check("inference", f"Bearer {key}")
    assert auth.check("API", f"Bearer {auth.keys['API'][0]}")  # the API key never expires


async def test_one_set_of_keys_per_server_and_none_when_off(store, tmp_path):
    async with archive_dataplane(store) as dataplane:
        first = auth_for(dataplane, options(tmp_path / "key_file.json").torchserve)
        again = auth_for(dataplane, options(tmp_path / "key_file.json").torchserve)
        off = auth_for(dataplane, options(tmp_path / "other.json", enable_token_auth=False).torchserve)
    assert first is again and off is None and not (tmp_path / "other.json").exists()


async def test_inference_and_management_need_their_own_key(store, tmp_path):
    key_file = tmp_path / "key_file.json"
    async with archive_dataplane(store, "adder.mar") as dataplane:
        inference_app, management_app, metrics_app = apps(dataplane, options(key_file))
        keys = {kind: value["key"] for kind, value in json.loads(key_file.read_text()).items()}
        async with client(inference_app) as infer, client(management_app) as manage, client(metrics_app) as scrape:
            missing = await infer.post("/predictions/adder", json=ROW)
            wrong = await infer.post("/predictions/adder", json=ROW, headers=bearer("wrong"))
            crossed = await infer.post("/predictions/adder", json=ROW, headers=bearer(keys["management"]))
            right = await infer.post("/predictions/adder", json=ROW, headers=bearer(keys["inference"]))
            ping = await infer.get("/ping")
            listing = await manage.get("/models", headers=bearer(keys["inference"]))
            managed = await manage.get("/models", headers=bearer(keys["management"]))
            scraped = await scrape.get("/metrics")
    for refused in (missing, wrong, crossed, ping, listing):
        assert assert_error(refused, 400, "InvalidKeyException")["message"] == FAILED
    assert right.status_code == 200, right.text
    assert managed.json()["models"] == [{"modelName": "adder", "modelUrl": "adder.mar"}]
    assert scraped.status_code == 200 and "ts_inference_requests_total" in scraped.text


async def test_token_replaces_a_key_with_the_api_key(store, tmp_path):
    key_file = tmp_path / "key_file.json"
    async with archive_dataplane(store, "adder.mar") as dataplane:
        inference_app, management_app, _ = apps(dataplane, options(key_file))
        keys = {kind: value["key"] for kind, value in json.loads(key_file.read_text()).items()}
        async with client(inference_app) as infer, client(management_app) as manage:
            not_api = await manage.get("/token", params={"type": "inference"}, headers=bearer(keys["management"]))
            bad_type = await manage.get("/token", params={"type": "API"}, headers=bearer(keys["API"]))
            refreshed = await manage.get("/token", params={"type": "inference"}, headers=bearer(keys["API"]))
            fresh = json.loads(key_file.read_text())
            old = await infer.post("/predictions/adder", json=ROW, headers=bearer(keys["inference"]))
            new = await infer.post("/predictions/adder", json=ROW, headers=bearer(fresh["inference"]["key"]))
            managed = await manage.get("/models", headers=bearer(keys["management"]))
    assert_error(not_api, 400, "InvalidKeyException")
    assert_error(bad_type, 400, "BadRequestException")
    assert refreshed.status_code == 200 and "key_file.json" in refreshed.json()["status"]
    assert fresh["inference"]["key"] != keys["inference"]
    assert fresh["management"]["key"] == keys["management"] and fresh["API"]["key"] == keys["API"]
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert_error(old, 400, "InvalidKeyException")  # the replaced key is gone
    assert new.status_code == 200 and managed.status_code == 200


async def test_without_token_auth_there_is_no_token_endpoint(store, tmp_path):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        inference_app, management_app, _ = apps(dataplane, options(tmp_path / "key_file.json", enable_token_auth=False))
        async with client(inference_app) as infer, client(management_app) as manage:
            token = await manage.get("/token", params={"type": "inference"})
            answer = await infer.post("/predictions/adder", json=ROW)
    assert_error(token, 404, "ResourceNotFoundException")
    assert answer.status_code == 200 and not (tmp_path / "key_file.json").exists()
