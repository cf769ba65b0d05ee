"""TF Serving gRPC API with the stock tensorflow-serving-api client: Predict, GetModelMetadata,
GetModelStatus, HandleReloadConfigRequest; Predict, Classify, Regress, MultiInference,
GetModelMetadata and GetModelStatus on TF Serving's own test models served from a models.conf;
our compiled protos against TensorFlow's own."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402  (the stock client needs it; the server does not)
from google.protobuf import text_format  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from tests.conftest import CAT_CLASSES, pixels_nchw  # noqa: E402
from tests.savedmodels import adder  # noqa: E402

pytestmark = pytest.mark.slow  # a real server subprocess and the exported example models


def channel(server) -> grpc.Channel:
    return grpc.insecure_channel(
        f"127.0.0.1:{server.ports['tfserving_grpc']}", options=[("grpc.max_receive_message_length", 64 << 20)]
    )


@pytest.fixture(scope="module")
def stubs(tfserving_server):
    with channel(tfserving_server) as ch:
        yield prediction_service_pb2_grpc.PredictionServiceStub(ch), model_service_pb2_grpc.ModelServiceStub(ch)


def chelsea_request(name: str, version: int | None = None, label: str | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    image = pixels_nchw("chelsea").transpose(1, 2, 0)[None]
    request.inputs["input"].CopyFrom(tf.make_tensor_proto(image))  # tensor_content
    return request


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, timeout=60)
    return e.value


# -- wire compatibility -------------------------------------------------------------------
def _ours_to_tf(full_name: str) -> str:
    return full_name.removeprefix("triserve.").replace("tf.", "tensorflow.", 1)


def test_our_messages_match_tensorflow_serving_field_for_field():
    """Every field we define has TF's number, name, type and label, so the bytes are the same."""
    from google.protobuf import descriptor_pool

    from triserve.protos import tensorflow_pb2, tfserving_apis_pb2, tfserving_config_pb2

    pool = descriptor_pool.Default()
    checked = 0

    def compare(ours) -> None:
        nonlocal checked
        # SerializedInput and its lists are TF Serving's internal/serialized_input.proto: the same
        # wire as Input, the tf.Examples read as bytes (that package is not in the pip wheel).
        serialized = ours.name.startswith("Serialized")
        theirs = pool.FindMessageTypeByName(_ours_to_tf(ours.full_name).replace(".Serialized", "."))
        for field in ours.fields:
            other = theirs.fields_by_number[field.number]
            other_type = other.type
            if serialized and other.type == other.TYPE_MESSAGE and other.message_type.full_name == "tensorflow.Example":
                other_type = field.TYPE_BYTES
            assert (field.name, field.type, field.is_repeated) == (other.name, other_type, other.is_repeated), field.full_name
            if field.message_type is not None:
                want = other.message_type.full_name
                assert _ours_to_tf(field.message_type.full_name).replace(".Serialized", ".") == want, field.full_name
            checked += 1
        for nested in ours.nested_types:
            compare(nested)

    for module in (tensorflow_pb2, tfserving_apis_pb2, tfserving_config_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            compare(message)
    for enum in (tensorflow_pb2.DataType.DESCRIPTOR,):
        theirs = pool.FindEnumTypeByName(_ours_to_tf(enum.full_name))
        assert {v.name: v.number for v in enum.values}.items() <= {v.name: v.number for v in theirs.values}.items()
    assert checked > 80


def test_the_server_side_needs_no_tensorflow():
    code = (
        "import sys; import triserve.protocols.tfserving.grpc, triserve.protocols.tfserving.rest, "
        "triserve.repository.tfserving; assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- PredictionService --------------------------------------------------------------------
@pytest.mark.parametrize("version,label", [(None, None), (1, None), (None, "canary"), (None, "stable")])
def test_predict_knows_chelsea_is_a_cat(stubs, version, label):
    predict, _ = stubs
    response = predict.Predict(chelsea_request("effnet", version, label), timeout=60)
    probabilities = tf.make_ndarray(response.outputs["output"])
    assert probabilities.shape == (1, 1000) and probabilities.dtype == np.float32
    assert int(probabilities.argmax()) in CAT_CLASSES
    expected = version or {"canary": 2, "stable": 1}.get(label, 2)
    assert (response.model_spec.name, response.model_spec.version.value) == ("effnet", expected)
    assert response.model_spec.signature_name == "serving_default"


def test_predict_with_typed_float_val_on_the_onnx_model(stubs):
    predict, _ = stubs
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "efficientnet_lite0_onnx"
    image = pixels_nchw("chelsea")[None]
    tensor = request.inputs["input"]
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.tensor_shape.dim.extend([tensor.tensor_shape.Dim(size=d) for d in image.shape])
    tensor.float_val.extend(image.ravel().tolist())  # the typed field, not tensor_content
    response = predict.Predict(request, timeout=60)
    assert int(tf.make_ndarray(response.outputs["output"]).argmax()) in CAT_CLASSES


def test_predict_strings_and_output_filter(stubs):
    predict, _ = stubs
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "strings"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([[b"ab"], [b"xyz"]]))
    request.output_filter.append("upper")
    response = predict.Predict(request, timeout=60)
    assert list(response.outputs) == ["upper"]
    assert tf.make_ndarray(response.outputs["upper"]).tolist() == [[b"AB"], [b"XYZ"]]


def test_get_model_metadata(stubs):
    predict, _ = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "effnet"
    request.model_spec.version_label = "stable"
    response = predict.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)  # TF Serving's own type URL
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["input"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in signature.inputs["input"].tensor_shape.dim] == [-1, 224, 224, 3]
    assert [d.size for d in signature.outputs["output"].tensor_shape.dim] == [-1, 1000]


def test_errors_have_tf_serving_codes(stubs):
    predict, _ = stubs
    e = rpc_error(predict.Predict, chelsea_request("nope"))
    assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")
    e = rpc_error(predict.Predict, chelsea_request("effnet", version=3))
    assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(effnet, 3)")
    e = rpc_error(predict.Predict, chelsea_request("effnet", label="nightly"))
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nightly")
    request = chelsea_request("effnet")
    request.model_spec.signature_name = "other"
    assert rpc_error(predict.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    request = chelsea_request("effnet")
    request.inputs["input"].tensor_content = b"\x00" * 12  # does not match the shape
    assert rpc_error(predict.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "effnet"
    assert rpc_error(predict.GetModelMetadata, metadata).code() == grpc.StatusCode.INVALID_ARGUMENT
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "effnet"  # its signature takes images, not tf.Examples
    request.input.example_list.examples.add()
    assert rpc_error(predict.Classify, request).code() == grpc.StatusCode.INVALID_ARGUMENT


# -- ModelService -------------------------------------------------------------------------
def test_get_model_status(stubs):
    _, models = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "effnet"
    response = models.GetModelStatus(request, timeout=30)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]
    request.model_spec.version_label = "canary"
    assert [s.version for s in models.GetModelStatus(request, timeout=30).model_version_status] == [2]
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    assert rpc_error(models.GetModelStatus, request).code() == grpc.StatusCode.NOT_FOUND


def test_reload_config_replaces_the_model_list(start_server, tmp_path):
    for name, n in (("plus_one", 1.0), ("plus_ten", 10.0)):
        (tmp_path / name).mkdir()
        adder(tmp_path / name / "1", n)
    conf = tmp_path / "models.conf"
    conf.write_text("model_config_list { config { name: 'plus_one' base_path: 'plus_one' } }")
    server = start_server(
        "--model-config-file", conf, "--file-system-poll-wait-seconds", "0", frontends=("http", "tfserving_grpc")
    )
    new_config = text_format.Parse(
        f"model_config_list {{ config {{ name: 'plus_ten' base_path: '{tmp_path / 'plus_ten'}'"
        " version_labels { key: 'stable' value: 1 } } }",
        model_server_config_pb2.ModelServerConfig(),
    )
    with channel(server) as ch:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        models = model_service_pb2_grpc.ModelServiceStub(ch)

        def add(name: str, label: str | None = None) -> float:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            if label:
                request.model_spec.version_label = label
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
            return float(tf.make_ndarray(predict.Predict(request, timeout=30).outputs["y"])[0, 0])

        assert add("plus_one") == 2.0
        response = models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=new_config), timeout=120)
        assert response.status.error_code == 0
        assert add("plus_ten", "stable") == 11.0
        assert rpc_error(predict.Predict, predict_pb2.PredictRequest(model_spec={"name": "plus_one"})).code() == (
            grpc.StatusCode.NOT_FOUND
        )
        broken = text_format.Parse(
            f"model_config_list {{ config {{ name: 'gone' base_path: '{tmp_path / 'missing'}' }} }}",
            model_server_config_pb2.ModelServerConfig(),
        )
        e = rpc_error(models.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest(config=broken))
        assert e.code() == grpc.StatusCode.INTERNAL and "gone" in e.details()


# -- TF Serving's own test models, served from a models.conf ---------------------------------
def _example(x: float) -> tf.train.Example:
    return tf.train.Example(features=tf.train.Features(feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}))


def test_the_stock_client_on_tf_servings_test_models(testdata_server):
    """Predict, Classify, Regress, MultiInference, GetModelMetadata and GetModelStatus, each as the
    tensorflow-serving-api client sends it, on half_plus_two / half_plus_three / 2_versions."""
    with channel(testdata_server) as ch:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        models = model_service_pb2_grpc.ModelServiceStub(ch)

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], dtype=tf.float32))  # [3] for [-1,1]
        response = predict.Predict(request, timeout=60)
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), [2.5, 3.0, 4.5])

        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "half_plus_two"
        request.model_spec.signature_name = "classify_x_to_y"
        request.input.example_list.examples.extend([_example(20.0), _example(10.0)])
        result = predict.Classify(request, timeout=60).result
        assert [[c.score for c in row.classes] for row in result.classifications] == [[12.0], [7.0]]

        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "saved_model_half_plus_three"
        request.model_spec.signature_name = "tensorflow/serving/regress"
        request.input.example_list.examples.extend([_example(1.0), _example(2.0)])
        assert [r.value for r in predict.Regress(request, timeout=60).result.regressions] == [3.5, 4.0]

        request = inference_pb2.MultiInferenceRequest()
        for signature_name, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
            task = request.tasks.add(method_name=f"tensorflow/serving/{method}")
            task.model_spec.name = "saved_model_half_plus_two_2_versions"
            task.model_spec.signature_name = signature_name
        request.input.example_list.examples.append(_example(80.0))
        first, second = predict.MultiInference(request, timeout=60).results
        assert [r.value for r in first.regression_result.regressions] == [42.0]
        assert [c.score for c in second.classification_result.classifications[0].classes] == [42.0]
        assert first.model_spec.version.value == 124  # latest of the two versions

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "saved_model_half_plus_two_2_versions"
        signatures = get_model_metadata_pb2.SignatureDefMap()
        assert predict.GetModelMetadata(request, timeout=60).metadata["signature_def"].Unpack(signatures)
        assert len(signatures.signature_def) == 6
        assert signatures.signature_def["serving_default"].inputs["x"].name == "x:0"

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "saved_model_half_plus_two_2_versions"
        response = models.GetModelStatus(request, timeout=60)
        assert [(s.version, s.state) for s in response.model_version_status] == [
            (124, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        ]
