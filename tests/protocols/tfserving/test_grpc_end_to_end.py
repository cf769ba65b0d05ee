"""TF Serving gRPC API with the stock tensorflow-serving-api client: Predict, GetModelMetadata,
GetModelStatus, HandleReloadConfigRequest; our compiled protos against TensorFlow's own."""

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
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
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
        theirs = pool.FindMessageTypeByName(_ours_to_tf(ours.full_name))
        for field in ours.fields:
            other = theirs.fields_by_number[field.number]
            assert (field.name, field.type, field.is_repeated) == (other.name, other.type, other.is_repeated), field.full_name
            if field.message_type is not None:
                assert _ours_to_tf(field.message_type.full_name) == other.message_type.full_name, field.full_name
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
    assert rpc_error(predict.Classify, __import__("tensorflow_serving.apis.classification_pb2").apis.classification_pb2.ClassificationRequest()).code() == grpc.StatusCode.UNIMPLEMENTED


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
