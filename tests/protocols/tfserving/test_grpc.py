"""TF Serving gRPC API in-process: the real grpc.aio server called with the stock
tensorflow-serving-api stubs. PredictionService (Predict, Classify, Regress, MultiInference,
GetModelMetadata) and ModelService (GetModelStatus, HandleReloadConfigRequest), with TF Serving's
status codes, on the test's models and on TF Serving's own test models."""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace
from typing import AsyncIterator, NamedTuple

import grpc
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402  (the stock client needs it; the server does not)
from google.protobuf import any_pb2, text_format  # noqa: E402
from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from tests.conftest import free_port  # noqa: E402
from tests.inprocess import running_dataplane, triton_dataplane  # noqa: E402
from tests.protocols.tfserving.models import BROKEN, CLASSIFIER, HALF_PLUS_THREE, HALF_PLUS_TWO, PLUS, STRINGS  # noqa: E402
from triserve.core.dataplane import DataPlane  # noqa: E402
from triserve.options import ServerOptions  # noqa: E402
from triserve.protocols.tfserving.grpc import frontend  # noqa: E402
from triserve.repository import tfserving as tfserving_repository  # noqa: E402
from triserve.repository.tfserving import TFServingModels  # noqa: E402
from triserve.repository.triton import TritonRepositories  # noqa: E402

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
OK, UNKNOWN = 0, 2  # tensorflow.error.Code


class Stubs(NamedTuple):
    predict: prediction_service_pb2_grpc.PredictionServiceStub
    models: model_service_pb2_grpc.ModelServiceStub


@contextlib.asynccontextmanager
async def serving(dataplane: DataPlane) -> AsyncIterator[Stubs]:
    """The TF Serving gRPC front end on a free port, and the stock stubs on a channel to it."""
    port = free_port()
    server = frontend(dataplane, ServerOptions(), port)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Stubs(
                prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
            )
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def stubs(models_conf, triton_repository) -> AsyncIterator[Stubs]:
    """The tiny ONNX models, the SavedModels and TF Serving's test models behind one server;
    tests only read and predict."""
    catalog = models_conf(PLUS, STRINGS, BROKEN, CLASSIFIER, HALF_PLUS_TWO, HALF_PLUS_THREE)
    async with running_dataplane([catalog, TritonRepositories([triton_repository])]) as dataplane:
        async with serving(dataplane) as stubs:
            yield stubs


def predict_request(
    name: str, inputs: dict[str, object], version: int | None = None, label: str | None = None
) -> predict_pb2.PredictRequest:
    """`inputs`: TensorProtos, or arrays written as tf.make_tensor_proto writes them (tensor_content)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value))
    return request


def status_request(name: str, version: int | None = None, label: str | None = None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return request


async def rpc_error(call, request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call(request, timeout=30)
    return e.value


def outputs(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


def versions(response: get_model_status_pb2.GetModelStatusResponse) -> list[tuple[int, int, int, str]]:
    return [(s.version, s.state, s.status.error_code, s.status.error_message) for s in response.model_version_status]


def ones(rows: int) -> np.ndarray:
    return np.ones((rows, 16), np.int32)


# -- Predict ------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_predict_with_tensor_content(stubs):
    first = np.arange(32, dtype=np.int32).reshape(2, 16)
    response = await stubs.predict.Predict(predict_request("simple", {"INPUT0": first, "INPUT1": ones(2)}), timeout=30)
    result = outputs(response)
    assert sorted(result) == ["OUTPUT0", "OUTPUT1"]
    assert result["OUTPUT0"].dtype == np.int32
    np.testing.assert_array_equal(result["OUTPUT0"], first + 1)
    np.testing.assert_array_equal(result["OUTPUT1"], first - 1)
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("simple", 1, "serving_default")


@pytest.mark.anyio
async def test_predict_with_typed_fields(stubs):
    x = tf.make_tensor_proto(np.zeros((1, 3), np.float32))
    x.ClearField("tensor_content")
    x.float_val.extend([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(
        outputs(await stubs.predict.Predict(predict_request("doubler", {"x": x}), timeout=30))["y"], [[2.0, 4.0, 6.0]]
    )
    repeated = tf.make_tensor_proto(np.zeros((2, 16), np.int32))
    repeated.ClearField("tensor_content")
    repeated.int_val.append(5)  # one value fills the shape, as TensorFlow reads it
    response = await stubs.predict.Predict(predict_request("simple", {"INPUT0": repeated, "INPUT1": ones(2)}), timeout=30)
    np.testing.assert_array_equal(outputs(response)["OUTPUT0"], np.full((2, 16), 6))


@pytest.mark.parametrize(
    "version,label,expected", [(None, None, 2), (1, None, 1), (None, "stable", 1), (None, "canary", 2)]
)
@pytest.mark.anyio
async def test_predict_by_version_and_label(stubs, version, label, expected):
    request = predict_request("plus", {"x": np.array([[10.0]], np.float32)}, version, label)
    response = await stubs.predict.Predict(request, timeout=30)
    np.testing.assert_array_equal(outputs(response)["y"], [[10.0 + expected]])  # plus adds its version
    assert (response.model_spec.name, response.model_spec.version.value) == ("plus", expected)


@pytest.mark.anyio
async def test_output_filter_picks_the_outputs(stubs):
    request = predict_request("simple", {"INPUT0": ones(1), "INPUT1": ones(1)})
    request.output_filter.append("OUTPUT1")
    assert list((await stubs.predict.Predict(request, timeout=30)).outputs) == ["OUTPUT1"]
    request.output_filter.append("OUTPUT9")
    e = await rpc_error(stubs.predict.Predict, request)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "OUTPUT9" in e.details()


@pytest.mark.anyio
async def test_a_batch_above_max_batch_size_is_answered_in_order(stubs):
    first = np.repeat(np.arange(20, dtype=np.int32)[:, None], 16, axis=1)  # simple's max_batch_size is 8
    response = await stubs.predict.Predict(predict_request("simple", {"INPUT0": first, "INPUT1": ones(20)}), timeout=30)
    np.testing.assert_array_equal(outputs(response)["OUTPUT0"], first + 1)


@pytest.mark.anyio
async def test_strings_in_and_out(stubs):
    request = predict_request("strings", {"text": np.array([[b"ab"], [b"\xff\x00xyz"]], dtype=object)})
    result = outputs(await stubs.predict.Predict(request, timeout=30))
    assert result["length"].tolist() == [[2], [5]] and result["length"].dtype == np.int32
    assert result["upper"].tolist() == [[b"AB"], [b"\xff\x00XYZ"]]
    assert result["echo_bytes"].tolist() == [[b"ab"], [b"\xff\x00xyz"]]


# -- Predict errors -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,version,label,code,details",
    [
        ("nope", None, None, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        ("plus", 3, None, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(plus, 3)"),
        ("broken", None, None, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(broken)"),
        ("plus", None, "nightly", grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nightly"),
    ],
)
@pytest.mark.anyio
async def test_unknown_servables_have_tf_serving_codes(stubs, name, version, label, code, details):
    e = await rpc_error(stubs.predict.Predict, predict_request(name, {"x": np.ones((1, 1), np.float32)}, version, label))
    assert (e.code(), e.details()) == (code, details)


@pytest.mark.anyio
async def test_requests_the_model_cannot_take_are_invalid_arguments(stubs):
    def doubler(x) -> predict_pb2.PredictRequest:
        return predict_request("doubler", {"x": x})

    request = doubler(np.ones((1, 3), np.float32))
    request.model_spec.signature_name = "other"
    e = await rpc_error(stubs.predict.Predict, request)
    assert e.details() == 'Serving signature key "other" not found.'
    short = tf.make_tensor_proto(np.ones((2, 3), np.float32))
    short.tensor_content = b"\x00" * 12
    e = await rpc_error(stubs.predict.Predict, doubler(short))
    assert e.details() == "input 'x': tensor_content has 12 bytes, but shape [2, 3] of DT_FLOAT needs 24"
    bf16 = tf.make_tensor_proto(np.ones((1, 3), np.float32), dtype=tf.bfloat16)
    assert (await rpc_error(stubs.predict.Predict, doubler(bf16))).details() == "input 'x': dtype DT_BFLOAT16 is not supported"
    for request in (
        doubler(np.ones((1, 3), np.float64)),  # the model takes float32
        doubler(np.ones((1, 4), np.float32)),
        predict_request("doubler", {"y": np.ones((1, 3), np.float32)}),
        predict_request("simple", {"INPUT0": ones(1)}),
    ):
        assert (await rpc_error(stubs.predict.Predict, request)).code() == grpc.StatusCode.INVALID_ARGUMENT


# -- GetModelMetadata ---------------------------------------------------------------------
def metadata_request(name: str, label: str | None = None, fields=("signature_def",)):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    request.model_spec.name = name
    if label is not None:
        request.model_spec.version_label = label
    return request


@pytest.mark.anyio
async def test_metadata_is_a_signature_def_map_the_stock_client_unpacks(stubs):
    response = await stubs.predict.GetModelMetadata(metadata_request("simple"), timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("simple", 1)
    assert response.model_spec.signature_name == ""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)  # TF Serving's own type URL
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["INPUT0"].dtype == tf.int32.as_datatype_enum
    assert [d.size for d in signature.inputs["INPUT0"].tensor_shape.dim] == [-1, 16]
    assert sorted(signature.outputs) == ["OUTPUT0", "OUTPUT1"]
    labelled = await stubs.predict.GetModelMetadata(metadata_request("plus", label="stable"), timeout=30)
    assert labelled.model_spec.version.value == 1


@pytest.mark.anyio
async def test_metadata_errors(stubs):
    e = await rpc_error(stubs.predict.GetModelMetadata, metadata_request("simple", fields=()))
    assert (e.code(), e.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )
    e = await rpc_error(stubs.predict.GetModelMetadata, metadata_request("simple", fields=("signature_def", "other")))
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Metadata field other is not supported")
    assert (await rpc_error(stubs.predict.GetModelMetadata, metadata_request("nope"))).code() == grpc.StatusCode.NOT_FOUND


# -- TF Serving's own test models: every signature, Classify, Regress, MultiInference --------
def example(**features: float) -> "tf.train.Example":
    return tf.train.Example(
        features=tf.train.Features(
            feature={k: tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for k, v in features.items()}
        )
    )


def examples_input(*items, context=None) -> input_pb2.Input:
    given = input_pb2.Input()
    if context is None:
        given.example_list.examples.extend(items)
    else:
        given.example_list_with_context.examples.extend(items)
        given.example_list_with_context.context.CopyFrom(context)
    return given


def spec(request, name: str, signature_name: str = "", version: int | None = None):
    request.model_spec.name = name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    return request


@pytest.mark.anyio
async def test_predict_on_half_plus_two_takes_what_tf_serving_takes(stubs):
    """Shape [3] for x declared [-1,1] runs (TF Serving checks no shapes); the answer names the signature."""
    request = predict_request("half_plus_two", {"x": np.array([1.0, 2.0, 5.0], np.float32)})
    response = await stubs.predict.Predict(request, timeout=30)
    np.testing.assert_array_equal(outputs(response)["y"], [2.5, 3.0, 4.5])
    assert (response.model_spec.version.value, response.model_spec.signature_name) == (123, "serving_default")
    request = predict_request("half_plus_two", {"inputs": np.array([[2.0]], np.float32)})
    request.model_spec.signature_name = "regress_x2_to_y3"
    response = await stubs.predict.Predict(request, timeout=30)
    np.testing.assert_array_equal(outputs(response)["outputs"], [[4.0]])
    assert response.model_spec.signature_name == "regress_x2_to_y3"
    request = predict_request("saved_model_half_plus_three", {"x": np.array([1.0, 2.0, 5.0], np.float32)})
    np.testing.assert_array_equal(outputs(await stubs.predict.Predict(request, timeout=30))["y"], [3.5, 4.0, 5.5])


@pytest.mark.anyio
async def test_classify_answers_classes_per_example(stubs):
    request = spec(classification_pb2.ClassificationRequest(), "half_plus_two", "classify_x_to_y")
    request.input.CopyFrom(examples_input(example(x=20.0), example(x=10.0)))
    response = await stubs.predict.Classify(request, timeout=30)
    assert [[(c.label, c.score) for c in row.classes] for row in response.result.classifications] == [[("", 12.0)], [("", 7.0)]]
    assert (response.model_spec.name, response.model_spec.version.value) == ("half_plus_two", 123)
    assert response.model_spec.signature_name == "classify_x_to_y"
    # labels and several classes: the TF2 classifier (classes and scores [N,2])
    request = spec(classification_pb2.ClassificationRequest(), "classifier")
    request.input.CopyFrom(examples_input(example(x=0.0)))
    (row,) = (await stubs.predict.Classify(request, timeout=30)).result.classifications
    assert [(c.label, c.score) for c in row.classes] == [("pos", 0.5), ("neg", 0.5)]


@pytest.mark.anyio
async def test_regress_answers_one_value_per_example_and_merges_the_context(stubs):
    request = spec(regression_pb2.RegressionRequest(), "half_plus_two", "regress_x_to_y2")
    request.input.CopyFrom(examples_input(example(x=80.0), example(x=2.0)))
    response = await stubs.predict.Regress(request, timeout=30)
    assert [r.value for r in response.result.regressions] == [43.0, 4.0]
    assert response.model_spec.signature_name == "regress_x_to_y2"
    request = spec(regression_pb2.RegressionRequest(), "half_plus_two", "regress_x_to_y", version=123)
    request.input.CopyFrom(examples_input(example(x2=1.0), context=example(x=80.0)))
    assert [r.value for r in (await stubs.predict.Regress(request, timeout=30)).result.regressions] == [42.0]
    request = spec(regression_pb2.RegressionRequest(), "saved_model_half_plus_three", "tensorflow/serving/regress")
    request.input.CopyFrom(examples_input(example(x=1.0), example(x=2.0)))
    assert [r.value for r in (await stubs.predict.Regress(request, timeout=30)).result.regressions] == [3.5, 4.0]


@pytest.mark.anyio
async def test_multi_inference_runs_every_task_on_the_same_examples(stubs):
    request = inference_pb2.MultiInferenceRequest()
    for signature_name, method in (
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("regress_x_to_y2", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ):
        task = request.tasks.add(method_name=method)
        spec(task, "half_plus_two", signature_name)
    request.input.CopyFrom(examples_input(example(x=2.0), example(x=4.0)))
    response = await stubs.predict.MultiInference(request, timeout=30)
    first, second, third = response.results
    assert [r.value for r in first.regression_result.regressions] == [3.0, 4.0]
    assert [r.value for r in second.regression_result.regressions] == [4.0, 5.0]
    assert [[c.score for c in row.classes] for row in third.classification_result.classifications] == [[3.0], [4.0]]
    assert [(r.model_spec.signature_name, r.model_spec.version.value) for r in response.results] == [
        ("regress_x_to_y", 123), ("regress_x_to_y2", 123), ("classify_x_to_y", 123),
    ]


@pytest.mark.anyio
async def test_classify_regress_and_multi_inference_errors(stubs):
    request = spec(classification_pb2.ClassificationRequest(), "half_plus_two", "regress_x_to_y")
    request.input.CopyFrom(examples_input(example(x=1.0)))
    e = await rpc_error(stubs.predict.Classify, request)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == 'Expected classification signature outputs to contain at least one of "classes" or "scores".'
    request = spec(regression_pb2.RegressionRequest(), "half_plus_two", "nope")
    request.input.CopyFrom(examples_input(example(x=1.0)))
    assert (await rpc_error(stubs.predict.Regress, request)).details() == "No signature was found with the name: nope"
    request = spec(regression_pb2.RegressionRequest(), "half_plus_two", "regress_x_to_y")
    e = await rpc_error(stubs.predict.Regress, request)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    request = spec(regression_pb2.RegressionRequest(), "nope", "regress_x_to_y")
    assert (await rpc_error(stubs.predict.Regress, request)).code() == grpc.StatusCode.NOT_FOUND
    request = inference_pb2.MultiInferenceRequest()
    spec(request.tasks.add(method_name="tensorflow/serving/regress"), "half_plus_two", "regress_x_to_y")
    spec(request.tasks.add(method_name="tensorflow/serving/regress"), "half_plus_two", "regress_x_to_y")
    request.input.CopyFrom(examples_input(example(x=1.0)))
    assert (await rpc_error(stubs.predict.MultiInference, request)).details() == "Duplicate evaluation of signature: regress_x_to_y"
    request.tasks[1].model_spec.name = "plus"
    assert (await rpc_error(stubs.predict.MultiInference, request)).details() == (
        "All ModelSpecs in a MultiInferenceRequest must access the same model name."
    )
    request.tasks[1].model_spec.name = "half_plus_two"
    request.tasks[1].model_spec.signature_name = "serving_default"
    request.tasks[1].method_name = "tensorflow/serving/predict"
    e = await rpc_error(stubs.predict.MultiInference, request)
    assert (e.code(), e.details()) == (grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict")


@pytest.mark.anyio
async def test_metadata_lists_every_signature_with_graph_tensor_names(stubs):
    response = await stubs.predict.GetModelMetadata(metadata_request("half_plus_two"), timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert sorted(signatures.signature_def) == [
        "classify_x_to_y", "regress_x2_to_y3", "regress_x_to_y", "regress_x_to_y2", "serving_default",
    ]
    classify = signatures.signature_def["classify_x_to_y"]
    assert classify.method_name == "tensorflow/serving/classify"
    assert classify.inputs["inputs"].name == "tf_example:0" and classify.inputs["inputs"].tensor_shape.unknown_rank
    assert classify.outputs["scores"].name == "y:0"
    assert [d.size for d in classify.outputs["scores"].tensor_shape.dim] == [-1, 1]


# -- GetModelStatus -----------------------------------------------------------------------
@pytest.mark.anyio
async def test_model_status_across_versions(stubs):
    assert versions(await stubs.models.GetModelStatus(status_request("plus"), timeout=30)) == [
        (1, AVAILABLE, OK, ""),
        (2, AVAILABLE, OK, ""),
    ]
    assert versions(await stubs.models.GetModelStatus(status_request("plus", version=2), timeout=30)) == [
        (2, AVAILABLE, OK, "")
    ]
    assert versions(await stubs.models.GetModelStatus(status_request("plus", label="canary"), timeout=30)) == [
        (2, AVAILABLE, OK, "")
    ]
    assert versions(await stubs.models.GetModelStatus(status_request("simple"), timeout=30)) == [(1, AVAILABLE, OK, "")]


@pytest.mark.anyio
async def test_model_status_of_a_version_that_failed_to_load(stubs):
    ((version, state, code, message),) = versions(await stubs.models.GetModelStatus(status_request("broken"), timeout=30))
    assert (version, state, code) == (1, END, UNKNOWN)
    assert "saved_model.pb is not a SavedModel" in message


@pytest.mark.anyio
async def test_model_status_errors(stubs):
    e = await rpc_error(stubs.models.GetModelStatus, status_request("nope"))
    assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope")
    e = await rpc_error(stubs.models.GetModelStatus, status_request("plus", version=3))
    assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "Could not find version 3 of model plus")
    e = await rpc_error(stubs.models.GetModelStatus, status_request("plus", label="nightly"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- HandleReloadConfigRequest ------------------------------------------------------------
def reload_request(text: str) -> model_management_pb2.ReloadConfigRequest:
    config = text_format.Parse(f"model_config_list {{ {text} }}", model_server_config_pb2.ModelServerConfig())
    return model_management_pb2.ReloadConfigRequest(config=config)


async def add(stubs: Stubs, version: int | None = None, label: str | None = None) -> float:
    request = predict_request("plus", {"x": np.array([[10.0]], np.float32)}, version, label)
    return float(outputs(await stubs.predict.Predict(request, timeout=30))["y"][0, 0]) - 10.0


@pytest.mark.anyio
async def test_reload_config_replaces_the_model_list(models_conf):
    catalog = models_conf(PLUS)
    async with running_dataplane([catalog], configurable=catalog) as dataplane, serving(dataplane) as stubs:
        assert await add(stubs) == 2.0
        # plus changes policy and labels, strings is new
        response = await stubs.models.HandleReloadConfigRequest(
            reload_request(
                "config { name: 'plus' base_path: 'plus' model_version_policy { all {} }"
                " version_labels { key: 'stable' value: 3 } }" + STRINGS
            ),
            timeout=60,
        )
        assert response.status.error_code == OK
        assert (await add(stubs), await add(stubs, version=1), await add(stubs, label="stable")) == (3.0, 1.0, 3.0)
        assert [v for v, *_ in versions(await stubs.models.GetModelStatus(status_request("plus"), timeout=30))] == [1, 2, 3]
        text = tf.make_tensor_proto(np.array([[b"a"]], dtype=object))
        assert "length" in (await stubs.predict.Predict(predict_request("strings", {"text": text}), timeout=30)).outputs
        # a model the config leaves out unloads
        await stubs.models.HandleReloadConfigRequest(reload_request(STRINGS), timeout=60)
        e = await rpc_error(stubs.predict.Predict, predict_request("plus", {"x": np.ones((1, 1), np.float32)}))
        assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(plus)")
        assert dataplane.names() == ["strings"]


CUSTOM = model_management_pb2.ReloadConfigRequest(
    config=model_server_config_pb2.ModelServerConfig(custom_model_config=any_pb2.Any(type_url="type.googleapis.com/my.Config"))
)


@pytest.mark.parametrize(
    "request_,details",
    [
        (reload_request(PLUS + PLUS), "Illegal to list model plus multiple times in config list"),
        (reload_request("config { name: 'plus' }"), "model 'plus' has no base_path"),
        (
            reload_request("config { name: 'plus' base_path: 'plus' model_platform: 'pytorch' }"),
            "model 'plus': model_platform 'pytorch' is not supported; only 'tensorflow'",
        ),
        (CUSTOM, "custom_model_config is not supported; use model_config_list"),
    ],
    ids=["duplicate", "no base_path", "platform", "custom"],
)
@pytest.mark.anyio
async def test_a_config_that_is_not_valid_changes_nothing(models_conf, request_, details):
    catalog = models_conf(PLUS, STRINGS)
    async with running_dataplane([catalog], configurable=catalog) as dataplane, serving(dataplane) as stubs:
        e = await rpc_error(stubs.models.HandleReloadConfigRequest, request_)
        assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, details)
        assert await add(stubs, label="canary") == 2.0
        assert dataplane.names() == ["plus", "strings"]


@pytest.mark.anyio
async def test_a_model_of_the_new_config_that_fails_to_load_is_an_internal_error(models_conf):
    catalog = models_conf(STRINGS)
    async with running_dataplane([catalog], configurable=catalog) as dataplane, serving(dataplane) as stubs:
        e = await rpc_error(stubs.models.HandleReloadConfigRequest, reload_request(PLUS + BROKEN))
        assert e.code() == grpc.StatusCode.INTERNAL
        assert e.details().startswith("failed to load model(s): broken: ") and "plus" not in e.details()
        assert await add(stubs) == 2.0  # the models that load serve
        ((version, state, code, _),) = versions(await stubs.models.GetModelStatus(status_request("broken"), timeout=30))
        assert (version, state, code) == (1, END, UNKNOWN)
        assert sorted(dataplane.names()) == ["broken", "plus"]


@pytest.mark.anyio
async def test_a_reload_holds_until_the_config_files_next_poll(models_conf, monkeypatch):
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(tfserving_repository, "time", SimpleNamespace(monotonic=lambda: clock.now))
    polled = TFServingModels(config_file=models_conf(PLUS).config_file, config_poll_seconds=60)
    async with running_dataplane([polled], configurable=polled) as dataplane, serving(dataplane) as stubs:
        clock.now += 120  # the file's poll is due when the reload comes
        await stubs.models.HandleReloadConfigRequest(reload_request(STRINGS), timeout=60)
        assert dataplane.names() == ["strings"]
        clock.now += 61
        await dataplane.manager.poll()  # the server's poll loop, one round
        assert dataplane.names() == ["plus"]  # then the file wins, as TF Serving's config file poll does


@pytest.mark.anyio
async def test_reload_config_needs_a_model_config(triton_repository):
    async with triton_dataplane(triton_repository) as dataplane, serving(dataplane) as stubs:
        e = await rpc_error(stubs.models.HandleReloadConfigRequest, reload_request(STRINGS))
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED
        assert e.details().startswith("this server has no TF Serving model config to reload")


def test_an_input_that_is_not_an_input_message_is_an_invalid_argument():
    """Classify / Regress / MultiInference read `input` as TF Serving's SerializedInput, unchecked until then."""
    from triserve.errors import ServerError
    from triserve.protocols.tfserving.grpc import serialized_examples

    with pytest.raises(ServerError) as e:
        serialized_examples(b"\x0a\xff\xff")
    assert e.value.message == "the request's input is not a valid tensorflow.serving.Input message"
    assert serialized_examples(b"") == []  # no examples: "Input is empty." once a signature is found


@pytest.mark.anyio
async def test_examples_are_capped_like_bytes_elements(models_conf):
    """Each tf.Example becomes one Python object: --grpc-max-bytes-elements bounds them too."""
    from triserve.options import GRPCOptions

    catalog = models_conf(HALF_PLUS_TWO)
    async with running_dataplane([catalog]) as dataplane:
        port = free_port()
        server = frontend(dataplane, ServerOptions(grpc=GRPCOptions(max_bytes_elements=2)), port)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                request = spec(regression_pb2.RegressionRequest(), "half_plus_two", "regress_x_to_y")
                request.input.CopyFrom(examples_input(example(x=1.0), example(x=2.0)))
                assert [r.value for r in (await predict.Regress(request, timeout=30)).result.regressions] == [2.5, 3.0]
                request.input.example_list.examples.append(example(x=3.0))
                e = await rpc_error(predict.Regress, request)
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "--grpc-max-bytes-elements" in e.details()
        finally:
            await server.stop()
