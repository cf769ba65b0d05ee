"""TorchServe's inference API in-process: `/ping` and `/predictions` over real archives."""

from __future__ import annotations

import json

import pytest

from tests.inprocess import tiny_repository
from tests.protocols.torchserve.support import (
    DIFFERENCE, ROW, SUM, archive_dataplane, assert_error, batch_size, client, jpeg,
)
from triserve.protocols.torchserve.inference import TorchServeInference

pytestmark = pytest.mark.anyio

ADDED = {"OUTPUT0": SUM, "OUTPUT1": DIFFERENCE}
RED, BLUE = (250, 0, 0), (0, 0, 250)


async def test_ping_is_healthy_when_every_model_is_ready(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            response = await inference.get("/ping")
    assert response.status_code == 200
    assert response.json() == {"status": "Healthy"}


async def test_ping_is_unhealthy_while_a_startup_archive_failed_to_load(store):
    async with archive_dataplane(store, "adder.mar", "broken.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            response = await inference.post("/ping")
    assert response.status_code == 500
    assert response.json() == {"status": "Unhealthy"}


async def test_put_and_post_raw_bodies(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            put = await inference.put("/predictions/adder", content=json.dumps(ROW).encode())  # curl -T
            posted = await inference.post("/predictions/adder/1.0", json=ROW)
    assert put.status_code == 200, put.text
    assert put.json() == ADDED
    assert put.text.startswith('{\n  "OUTPUT0"')  # indented, as TorchServe writes JSON
    assert put.headers["content-type"] == "application/json"
    assert put.headers["x-request-id"] and "no-store" in put.headers["cache-control"]
    assert posted.json() == ADDED


async def test_multipart_with_one_and_several_files(store):
    other = {"INPUT0": [5] * 16, "INPUT1": [2] * 16}
    files = [("data", ("a.json", json.dumps(ROW), "application/json")),
             ("data", ("b.json", json.dumps(other), "application/json"))]
    async with archive_dataplane(store, "adder.mar", **batch_size(2, "adder")) as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            one = await inference.post("/predictions/adder", files={"data": ("row.json", json.dumps(ROW), "application/json")})
            several = await inference.post("/predictions/adder", files=files)
        model = dataplane.resolve("adder")
    assert one.json() == ADDED
    assert several.status_code == 200, several.text
    assert several.json() == [ADDED, {"OUTPUT0": [7] * 16, "OUTPUT1": [3] * 16}]  # one answer per file, in order
    assert (model.stats.inference_count, model.stats.execution_count) == (3, 2)  # the two files ran as one batch


async def test_more_files_than_the_batch_size_is_a_bad_request(store):
    files = [("data", (f"{i}.json", json.dumps(ROW), "application/json")) for i in range(3)]
    async with archive_dataplane(store, "adder.mar", **batch_size(2, "adder")) as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            three = await inference.post("/predictions/adder", files=files)
            repeated = await inference.post("/predictions/adder", data={"data": [json.dumps(ROW)] * 3})  # urlencoded
            two = await inference.post("/predictions/adder", files=files[:2])
        model = dataplane.resolve("adder")
    message = assert_error(three, 400, "BadRequestException")["message"]
    assert "3 parts" in message and "batch size (2)" in message
    assert "'data' 3 times" in assert_error(repeated, 400, "BadRequestException")["message"]
    assert two.status_code == 200 and len(two.json()) == 2
    assert model.stats.inference_count == 2  # the refused requests never reached the model


async def test_urlencoded_field(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            response = await inference.post("/predictions/adder", data={"data": json.dumps(ROW)})
    assert response.json() == ADDED


async def test_image_classifier_answers_labelled_probabilities(store):
    async with archive_dataplane(store, "colors.mar", **batch_size(2, "colors")) as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            red = await inference.put("/predictions/colors", content=jpeg(RED))
            batch = await inference.post("/predictions/colors", files=[
                ("data", ("red.jpg", jpeg(RED), "image/jpeg")),
                ("data", ("blue.jpg", jpeg(BLUE), "image/jpeg")),
            ])
            not_an_image = await inference.put("/predictions/colors", content=b"this is not an image")
    answer = red.json()
    assert list(answer) == ["red", "blue", "green"]  # every class, the most probable first
    assert answer["red"] > 0.9 and sum(answer.values()) == pytest.approx(1, abs=1e-5)
    first, second = batch.json()
    assert next(iter(first)) == "red" and next(iter(second)) == "blue"
    message = assert_error(not_an_image, 400, "BadRequestException")["message"]
    assert message.startswith("the request body is not a decodable image") and "object at 0x" not in message


async def test_models_of_a_triton_repository_answer_json_tensors(store, tmp_path):
    async with archive_dataplane(store, repository=tiny_repository(tmp_path)) as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            bare = await inference.post("/predictions/doubler", json=[1.5, 2, -3])  # a one-input model
            named = await inference.post("/predictions/simple/1", json=ROW)
            wrong_shape = await inference.post("/predictions/doubler", json={"x": [1, 2]})
    assert bare.json() == {"y": [3.0, 4.0, -6.0]}
    assert named.json() == ADDED
    assert "shape" in assert_error(wrong_shape, 400, "BadRequestException")["message"]


async def test_unknown_models_versions_and_paths(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            model = await inference.post("/predictions/nope", json=ROW)
            version = await inference.post("/predictions/adder/9.9", json=ROW)
            path = await inference.post("/nowhere")
            method = await inference.get("/predictions/adder")
    assert assert_error(model, 404, "ModelNotFoundException")["message"] == "Model not found: nope"
    assert (assert_error(version, 404, "ModelVersionNotFoundException")["message"]
            == "Model version: 9.9 does not exist for model: adder")
    assert_error(path, 404, "ResourceNotFoundException")
    assert_error(method, 405, "MethodNotAllowedException")


async def test_an_unknown_version_of_a_triton_model_is_not_found(store, tmp_path):
    async with archive_dataplane(store, repository=tiny_repository(tmp_path)) as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            response = await inference.post("/predictions/simple/7", json=ROW)
    assert_error(response, 404, "ModelVersionNotFoundException")


async def test_a_model_scaled_to_zero_workers_is_unavailable(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        await dataplane.scale("adder", 0)
        async with client(TorchServeInference(dataplane).app()) as inference:
            response = await inference.post("/predictions/adder", json=ROW)
    error = assert_error(response, 503, "ServiceUnavailableException")
    assert error["message"].startswith('Model "adder" has no worker to serve inference request')


async def test_bodies_over_max_request_size_are_refused(store):
    body = json.dumps(ROW).encode()
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(TorchServeInference(dataplane, max_request_size=len(body) - 1).app()) as inference:
            declared = await inference.post("/predictions/adder", content=body)  # Content-Length says it

            async def chunks():
                yield body[:10]
                yield body[10:]

            streamed = await inference.post("/predictions/adder", content=chunks())  # chunked: counted as it comes
        async with client(TorchServeInference(dataplane, max_request_size=len(body)).app()) as inference:
            fits = await inference.post("/predictions/adder", content=body)
    assert "max_request_size" in assert_error(declared, 413, "RequestEntityTooLargeException")["message"]
    assert "transfer-encoding" not in declared.request.headers
    assert_error(streamed, 413, "RequestEntityTooLargeException")
    assert streamed.request.headers["transfer-encoding"] == "chunked"
    assert fits.json() == ADDED


async def test_requests_that_are_not_json_tensors_are_bad_requests(store):
    async with archive_dataplane(store, "adder.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            not_json = await inference.put("/predictions/adder", content=b"{nope")
            declared_json = await inference.post("/predictions/adder", content=b"{nope",
                                                 headers={"content-type": "application/json"})
            unknown_input = await inference.post("/predictions/adder", json={"INPUT9": [1]})
    assert "JSON" in assert_error(not_json, 400, "BadRequestException")["message"]
    assert "not valid JSON" in assert_error(declared_json, 400, "BadRequestException")["message"]
    assert "INPUT9" in assert_error(unknown_input, 400, "BadRequestException")["message"]
